"""Saving, reloading and pushing patched models: exact round trips, the posenc-<type> model types, safe loading,
bad input, the model card, the push path (the Hub's API intercepted), and the patch / inspect / push CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers as tf
from tiny_models import HEADS, MAX_POSITIONS, SEQ2SEQ, tiny_model, token_ids

import hf_posenc
from hf_posenc import cli
from hf_posenc.architectures import ARCHITECTURES
from hf_posenc.encodings import ENCODINGS
from hf_posenc.hub import TRIPWIRE, PushError

ENCODER_ENCODINGS = sorted(name for name, cls in ENCODINGS.items() if cls.kind != "none")
DECODER_INPUT_LENGTH = 7


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


def tiny_tokenizer(pad_id: int, size: int = 99) -> tf.BertTokenizer:
    """A WordPiece tokenizer of `size` tokens whose pad id matches the tiny model's."""
    specials = ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(size - len(specials) - 1)]
    tokens = specials[:pad_id] + ["[PAD]"] + specials[pad_id:] + words
    return tf.BertTokenizer(vocab={token: index for index, token in enumerate(tokens)})


def inputs(model: torch.nn.Module, length: int = 24) -> dict[str, torch.Tensor]:
    """Two padded rows (the second ends in 6 pads), shaped for the model's head."""
    ids = token_ids(2, length)
    mask = torch.ones_like(ids)
    mask[1, -6:] = 0
    ids[1, -6:] = model.config.pad_token_id
    batch = {"input_ids": ids, "attention_mask": mask}
    if type(model).__name__.endswith("ForMultipleChoice"):
        batch = {k: v.unsqueeze(1).expand(-1, 2, -1).contiguous() for k, v in batch.items()}
    if type(model).__name__.endswith("ForSequenceClassification") and model.config.is_encoder_decoder:
        ids[:, -7] = model.config.eos_token_id  # BART classifies the decoder state at the (last) <eos>
    elif model.config.is_encoder_decoder:
        batch["decoder_input_ids"] = token_ids(2, DECODER_INPUT_LENGTH, seed=1)
    return batch


@torch.no_grad()
def first_output(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch)[0]


def assert_identical(original: torch.nn.Module, reloaded: torch.nn.Module, batch: dict | None = None) -> None:
    """Same class, state dict, patch spec and backend; outputs with padding identical to the last bit."""
    assert type(reloaded) is type(original)
    expected, found = original.state_dict(), reloaded.state_dict()
    assert found.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(found[key], tensor), key
    assert hf_posenc.patch_spec(reloaded) == hf_posenc.patch_spec(original)
    assert reloaded.config._attn_implementation == original.config._attn_implementation
    assert reloaded.config.model_type == original.config.model_type
    batch = inputs(original) if batch is None else batch
    difference = (first_output(reloaded, batch) - first_output(original, batch)).abs().max().item()
    assert difference == 0.0


def patched(model_type: str, encoding: str, head: str | None = None, **options) -> torch.nn.Module:
    model = tiny_model(model_type, head)
    if encoding == "none":  # NoPE is for causal decoders only
        return hf_posenc.patch_model(model, encoder="alibi", decoder="none")
    return hf_posenc.patch_model(model, encoding, **options)


def save(model: torch.nn.Module, folder: Path, tokenizer=None) -> Path:
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def edit_config(folder: Path, change) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


# ---------------------------------------------------------------------------------------------------------------------
# Exact round trips
# ---------------------------------------------------------------------------------------------------------------------

MATRIX = [(arch, enc) for arch in ARCHITECTURES for enc in ENCODER_ENCODINGS] + [(a, "none") for a in SEQ2SEQ]


@pytest.mark.parametrize(("model_type", "encoding"), MATRIX, ids=[f"{a}-{e}" for a, e in MATRIX])
def test_round_trip_is_exact(tmp_path, model_type, encoding):
    model = patched(model_type, encoding).eval()
    assert_identical(model, hf_posenc.from_pretrained(save(model, tmp_path)))


HEAD_CASES = [(arch, head) for arch in ("bert", "distilbert", "bart") for head in HEADS[arch]]


@pytest.mark.parametrize(("model_type", "head"), HEAD_CASES, ids=[h for _, h in HEAD_CASES])
def test_round_trip_keeps_task_heads_and_auto_classes_load_them(tmp_path, model_type, head):
    model = patched(model_type, "t5" if model_type == "bart" else "rope", head)
    folder = save(model, tmp_path)
    assert_identical(model, hf_posenc.from_pretrained(folder))
    auto = getattr(tf, hf_posenc.hub.publish.auto_class_name(model))
    assert_identical(model, auto.from_pretrained(folder))  # the ordinary transformers way, after `import hf_posenc`


def test_auto_model_loads_the_base_of_a_head_checkpoint(tmp_path):
    model = patched("bert", "relative_key_query", "BertForSequenceClassification")
    base = tf.AutoModel.from_pretrained(save(model, tmp_path))
    assert type(base) is tf.BertModel
    batch = inputs(model)
    with torch.no_grad():
        expected = model.bert(**batch).last_hidden_state
        assert (base(**batch).last_hidden_state - expected).abs().max().item() == 0.0
    assert hf_posenc.patch_spec(base) == hf_posenc.patch_spec(model)


def test_auto_from_config_builds_a_fresh_patched_model(tmp_path):
    model = patched("bert", "t5", "BertForMaskedLM")
    config = tf.AutoConfig.from_pretrained(save(model, tmp_path))
    assert type(config).__name__ == "PosencBertConfig" and config.model_type == "posenc-bert"
    fresh = tf.AutoModelForMaskedLM.from_config(config)
    assert type(fresh) is tf.BertForMaskedLM
    assert hf_posenc.patch_spec(fresh) == hf_posenc.patch_spec(model)
    assert fresh.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("model_type", SEQ2SEQ)
def test_seq2seq_with_different_encoder_and_decoder_encodings(tmp_path, model_type):
    model = tiny_model(model_type, HEADS[model_type][1])  # ...ForConditionalGeneration
    hf_posenc.patch_model(model, encoder="alibi", decoder={"encoding": "rope", "base": 500})
    reloaded = hf_posenc.from_pretrained(save(model, tmp_path))
    assert_identical(model, reloaded)
    prompt = token_ids(1, 12)
    settings = dict(max_new_tokens=5, do_sample=False, num_beams=1)
    assert torch.equal(model.generate(prompt, **settings), reloaded.generate(prompt, **settings))


@pytest.mark.parametrize("model_type", ["bert", "roberta", "bart"])
def test_keep_absolute_hybrid(tmp_path, model_type):
    model = patched(model_type, "relative_key", keep_absolute=True)
    with torch.no_grad():  # the zero-initialized relative tables would hide a lost table
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    assert_identical(model, hf_posenc.from_pretrained(save(model, tmp_path)))


@pytest.mark.parametrize("model_type", ["bert", "roberta", "bart"])
def test_extended_learned_table(tmp_path, model_type):
    model = tiny_model(model_type)
    hf_posenc.extend_positions(model, 160, init="interpolate")
    reloaded = hf_posenc.from_pretrained(save(model, tmp_path))
    assert_identical(model, reloaded)
    long_ids = token_ids(1, 150)
    assert torch.equal(first_output(reloaded, {"input_ids": long_ids}), first_output(model, {"input_ids": long_ids}))


PLAIN_LOAD = """
import sys, torch, transformers
model = transformers.AutoModel.from_pretrained(sys.argv[1]).eval()
assert "hf_posenc" not in sys.modules
ids = torch.load(sys.argv[2])
print("DIFF", (model(input_ids=ids).last_hidden_state - torch.load(sys.argv[3])).abs().max().item())
"""


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_extension_alone_saves_a_checkpoint_stock_transformers_loads(tmp_path, model_type):
    """An extended learned table needs nothing from hf_posenc: the checkpoint keeps its model type (and the record)."""
    model = tiny_model(model_type)
    hf_posenc.extend_positions(model, 160)
    folder = save(model, tmp_path / "checkpoint")
    written = json.loads((folder / "config.json").read_text())
    assert written["model_type"] == model_type and written["posenc"]["stacks"]["encoder"]["max_length"] == 160
    assert not (folder / "posenc_loader.py").exists()
    ids = token_ids(1, 150)
    torch.save(ids, tmp_path / "ids.pt")
    torch.save(model(input_ids=ids).last_hidden_state, tmp_path / "expected.pt")
    command = [sys.executable, "-c", PLAIN_LOAD, str(folder), str(tmp_path / "ids.pt"), str(tmp_path / "expected.pt")]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert "DIFF 0.0" in done.stdout, done.stderr[-2000:]
    assert_identical(model, hf_posenc.from_pretrained(folder))


def test_bart_stacks_extended_to_different_lengths(tmp_path):
    model = tiny_model("bart")
    hf_posenc.extend_positions(model, 128, stacks="encoder")
    reloaded = hf_posenc.from_pretrained(save(model, tmp_path))
    assert_identical(model, reloaded)
    assert reloaded.get_decoder().embed_positions.num_embeddings == MAX_POSITIONS + 2


def test_extended_hybrid_table(tmp_path):
    model = patched("bert", "relative_key", keep_absolute=True)
    hf_posenc.extend_positions(model, 160)
    assert hf_posenc.patch_spec(model)["stacks"]["encoder"]["table_init"] == "copy"
    assert_identical(model, hf_posenc.from_pretrained(save(model, tmp_path)))


@pytest.mark.parametrize(("model_type", "mode"), [("bert", "recurrent"), ("bert", "grouped"), ("bart", "grouped")])
def test_mapped_positions(tmp_path, model_type, mode):
    model = hf_posenc.patch_model(tiny_model(model_type), "learned", position_ids=mode, max_length=200)
    reloaded = hf_posenc.from_pretrained(save(model, tmp_path))
    assert_identical(model, reloaded)
    long_ids = token_ids(1, 190)
    batch = {"input_ids": long_ids, **({"decoder_input_ids": long_ids} if model_type in SEQ2SEQ else {})}
    assert torch.equal(first_output(reloaded, batch), first_output(model, batch))


def test_sharded_checkpoint(tmp_path):
    model = patched("bert", "t5", "BertForMaskedLM")
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert_identical(model, hf_posenc.from_pretrained(tmp_path))


def test_hub_repo_id_downloads_no_code_and_no_pickles(tmp_path, monkeypatch):
    model = patched("bert", "alibi", "BertForSequenceClassification")
    folder = save(model, tmp_path / "snapshot")
    requests = []

    def snapshot_download(repo_id, **kwargs):  # the Hub's download endpoint, intercepted
        requests.append((repo_id, kwargs))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert_identical(model, hf_posenc.from_pretrained("someone/bert-alibi", revision="v1"))
    (repo_id, kwargs), patterns = requests[0], requests[0][1]["allow_patterns"]
    assert repo_id == "someone/bert-alibi" and kwargs["revision"] == "v1"
    assert "*.safetensors" in patterns and not any(p.endswith((".py", ".bin")) or p == "*" for p in patterns)


def test_tokenizer_keeps_its_limit(tmp_path):
    model, tokenizer = tiny_model("bert"), tiny_tokenizer(0)
    hf_posenc.patch_model(model, "alibi", max_length=256, tokenizer=tokenizer)
    folder = save(model, tmp_path, tokenizer)
    reloaded = hf_posenc.from_pretrained(folder)
    assert_identical(model, reloaded)
    assert tf.AutoTokenizer.from_pretrained(folder).model_max_length == 256
    assert reloaded.config.max_position_embeddings == 256


def test_reloaded_model_refuses_unpatch_instead_of_restoring_random_tables(tmp_path):
    reloaded = hf_posenc.from_pretrained(save(patched("bert", "alibi"), tmp_path))
    with pytest.raises(ValueError, match="no original table"):
        hf_posenc.unpatch_model(reloaded)


def test_saved_config_says_posenc_type_while_the_model_keeps_its_own(tmp_path):
    model = patched("roberta", "rope")
    config = json.loads((save(model, tmp_path) / "config.json").read_text())
    assert config["model_type"] == "posenc-roberta" and model.config.model_type == "roberta"
    assert config["auto_map"]["AutoConfig"] == "posenc_loader.PosencRobertaConfig"
    assert config["auto_map"]["AutoModel"] == "posenc_loader.PosencRobertaModel"
    assert (tmp_path / "posenc_loader.py").is_file()
    hf_posenc.unpatch_model(model)
    unpatched = json.loads((save(model, tmp_path / "again") / "config.json").read_text())
    assert unpatched["model_type"] == "roberta" and "auto_map" not in unpatched
    assert not (tmp_path / "again" / "posenc_loader.py").exists()


def test_plain_checkpoint_loads_unpatched_through_transformers(tmp_path):
    model = tiny_model("bert", "BertForTokenClassification")
    reloaded = hf_posenc.from_pretrained(save(model, tmp_path))
    assert type(reloaded) is tf.BertForTokenClassification and hf_posenc.patch_spec(reloaded) is None
    batch = inputs(model)
    assert torch.equal(first_output(reloaded, batch), first_output(model, batch))


# ---------------------------------------------------------------------------------------------------------------------
# Never silently wrong: plain transformers, in a process that has not imported hf_posenc
# ---------------------------------------------------------------------------------------------------------------------

PLAIN_TRANSFORMERS = """
import importlib.abc, json, sys, torch, transformers as tf

folder, expected = sys.argv[1], torch.load(sys.argv[2])
report = {}

def attempt(name, load):
    try:
        model = load()
        with torch.no_grad():
            report[name] = {"loaded": (model(**torch.load(sys.argv[3]))[0] - expected).abs().max().item()}
    except Exception as error:
        report[name] = {"error": type(error).__name__, "message": str(error)}

attempt("auto", lambda: tf.AutoModelForSequenceClassification.from_pretrained(folder))

class NotInstalled(importlib.abc.MetaPathFinder):  # as if hf_posenc were not installed
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "hf_posenc":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
attempt("trusted_not_installed", lambda: tf.AutoModelForSequenceClassification.from_pretrained(
    folder, trust_remote_code=True))
sys.meta_path.pop(0)
report["imported_before_trust"] = "hf_posenc" in sys.modules
attempt("trusted", lambda: tf.AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True))
print("REPORT " + json.dumps(report))
"""


FILES = ("expected.pt", "batch.pt")


def test_plain_transformers_refuses_or_loads_correctly(tmp_path):
    model = patched("bert", "relative_key", "BertForSequenceClassification")
    folder = save(model, tmp_path / "checkpoint")
    batch = inputs(model)
    torch.save(first_output(model, batch), tmp_path / FILES[0])
    torch.save(batch, tmp_path / FILES[1])
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", PLAIN_TRANSFORMERS, str(folder), *(str(tmp_path / f) for f in FILES)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
    line = next((x for x in done.stdout.splitlines() if "REPORT " in x), None)  # after transformers' y/N prompt
    assert line is not None, done.stderr[-3000:]
    report = json.loads(line.split("REPORT ", 1)[1])
    # No trust_remote_code: transformers refuses (it would otherwise run the loader shim).
    assert report["auto"]["error"] == "ValueError" and "trust_remote_code=True" in report["auto"]["message"]
    # trust_remote_code without hf_posenc installed: an ImportError that names it and how to install it.
    assert report["trusted_not_installed"]["error"] == "ImportError"
    assert "hf_posenc.from_pretrained(path)" in report["trusted_not_installed"]["message"]
    assert "pip install hf-posenc" in report["trusted_not_installed"]["message"]
    # trust_remote_code with hf_posenc installed: the shim hands over to hf_posenc, which loads it exactly.
    assert report["imported_before_trust"] is False
    assert report["trusted"] == {"loaded": 0.0}


@pytest.mark.parametrize(
    "model_type,encoding,head",
    [("bert", "alibi", "BertForSequenceClassification"), ("distilbert", "rope", None), ("bart", "t5", None)],
)
def test_direct_class_loading_without_hf_posenc_fails_naming_it(tmp_path, model_type, encoding, head):
    """The trip-wire: stock transformers cannot build a patched checkpoint as a plain model (it would load without
    its encoding); the error quotes how to load it. hf_posenc restores the real activation function."""
    model = patched(model_type, encoding, head)
    folder = save(model, tmp_path)
    field = hf_posenc.ARCHITECTURES[model_type].activation_field
    assert json.loads((folder / "config.json").read_text())[field] == TRIPWIRE
    code = f"import transformers; transformers.{type(model).__name__}.from_pretrained({str(folder)!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "hf_posenc.from_pretrained(path)" in done.stderr.splitlines()[-1]
    reloaded = hf_posenc.from_pretrained(folder)
    assert getattr(reloaded.config, field) == getattr(model.config, field) != TRIPWIRE
    assert "activation" not in reloaded.config.posenc


def test_direct_class_loading_is_refused_once_hf_posenc_is_imported(tmp_path):
    folder = save(patched("bert", "alibi", "BertForSequenceClassification"), tmp_path)
    with pytest.raises(
        KeyError, match=r"hf_posenc\.from_pretrained"
    ):  # the trip-wire: no transformers class is hooked
        tf.BertForSequenceClassification.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------------------------------
# Safe loading
# ---------------------------------------------------------------------------------------------------------------------


def test_no_code_from_the_checkpoint_runs(tmp_path):
    folder = save(patched("bert", "alibi", "BertForSequenceClassification"), tmp_path / "checkpoint")
    marker = tmp_path / "code_ran"
    (folder / "posenc_loader.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    hf_posenc.from_pretrained(folder)
    tf.AutoModelForSequenceClassification.from_pretrained(folder)
    tf.AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)  # local classes win
    assert not marker.exists()


@pytest.mark.parametrize("name", ["os.system", "Foo", "AutoTokenizer", "BartModel"])
def test_model_class_is_resolved_inside_transformers_only(tmp_path, name):
    folder = save(patched("bert", "alibi"), tmp_path)
    with pytest.raises(ValueError, match="transformers|not a 'bert' model class"):
        hf_posenc.from_pretrained(folder, model_class=name)
    edit_config(folder, lambda c: c.update(architectures=[name]))
    with pytest.raises(ValueError, match="transformers|not a 'bert' model class"):
        hf_posenc.from_pretrained(folder)


def test_pickled_weights_are_refused(tmp_path):
    folder = save(patched("bert", "alibi"), tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="safetensors only"):
        hf_posenc.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------------

CORRUPTIONS = {
    "missing block": (lambda c: c.pop("posenc"), "has no 'posenc' block"),
    "not a dict": (lambda c: c.update(posenc="alibi"), "must be"),
    "no stacks": (lambda c: c["posenc"].update(stacks={}), "must be"),
    "unknown stack": (lambda c: c["posenc"]["stacks"].update(middle={}), "unknown stack"),
    "unknown encoding": (lambda c: c["posenc"]["stacks"]["encoder"].update(encoding="fourier"), "unknown encoding"),
    "unknown option": (lambda c: c["posenc"]["stacks"]["encoder"]["options"].update(slope=2), "unknown option"),
    "bad option value": (lambda c: c["posenc"]["stacks"]["encoder"]["options"].update(slope_scale=-1), "cannot be"),
    "newer major": (lambda c: c["posenc"].update(version="1.0.0"), "newer major"),
    "no version": (lambda c: c["posenc"].pop("version"), "no valid version"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_corrupted_posenc_block_is_a_clear_error(tmp_path, case):
    change, message = CORRUPTIONS[case]
    folder = save(patched("bert", "alibi"), tmp_path)
    edit_config(folder, change)
    with pytest.raises(ValueError, match=message):
        hf_posenc.from_pretrained(folder)


def test_fields_of_a_newer_version_warn_and_are_ignored(tmp_path):
    model = patched("bert", "alibi")
    folder = save(model, tmp_path)
    edit_config(folder, lambda c: (c["posenc"]["stacks"]["encoder"].update(window=8), c["posenc"].update(seen=1)))
    with pytest.warns(hf_posenc.record.RecordWarning, match="ignoring field"):
        reloaded = hf_posenc.from_pretrained(folder)
    assert_identical(model, reloaded)
    assert "window" not in hf_posenc.patch_spec(reloaded)["stacks"]["encoder"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["posenc"]["stacks"]["encoder"]["options"].update(max_distance=10), "do not match"),
        (lambda c: c["posenc"]["stacks"]["encoder"].update(encoding="alibi", options={}), "do not match"),
        (lambda c: c["posenc"]["stacks"]["encoder"].update(encoding="t5", options={}), "do not match"),
    ],
    ids=["other table size", "weights without a place", "other learned tensors"],
)
def test_weights_that_do_not_match_the_block_are_a_clear_error(tmp_path, change, message):
    folder = save(patched("bert", "relative_key"), tmp_path)
    edit_config(folder, change)
    with pytest.raises(ValueError, match=message):
        hf_posenc.from_pretrained(folder)


def test_folders_that_are_not_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        hf_posenc.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        hf_posenc.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 32}))
    with pytest.raises(ValueError, match="no model_type"):
        hf_posenc.from_pretrained(tmp_path)
    folder = save(patched("bert", "alibi"), tmp_path / "weightless")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no model.safetensors"):
        hf_posenc.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="local folder .* does not exist"):
        hf_posenc.from_pretrained(tmp_path / "no" / "such" / "folder")


# ---------------------------------------------------------------------------------------------------------------------
# Recipe results and the model card
# ---------------------------------------------------------------------------------------------------------------------


def run_results(encoding: str, seed: int = 0, accuracy: float = 0.7) -> dict:
    """A results.json as `hf-posenc train` writes it (hf_posenc.recipes.run_classification)."""
    return {
        "kind": "classification",
        "variant": encoding,
        "config": {"model": "all-MiniLM-L6-v2", "encoding": encoding, "dataset": "pang_lee", "train_length": 128,
                   "epochs": 3, "learning_rate": 5e-5, "seed": seed, "output_dir": "recipes/results/x"},
        "patch_spec": {"version": "0.1.0", "stacks": {"encoder": {"encoding": encoding, "options": {}}}},
        "dataset_info": {"name": "pang_lee", "citation": "Bo Pang and Lillian Lee. A Sentimental Education (2004)."},
        "metrics": {
            "128": {"accuracy": accuracy, "macro_f1": accuracy - 0.01, "n": 300, "seconds": 3.0, "seq_per_s": 99.0},
            "512": {"accuracy": accuracy + 0.05, "macro_f1": accuracy + 0.04, "n": 300, "seconds": 9.0},
        },
    }  # fmt: skip


def test_read_results_of_a_run_a_sweep_and_a_list():
    run = hf_posenc.read_results(run_results("alibi"))
    assert run.table == {"alibi": {"128": {"accuracy": [0.7], "macro_f1": [0.69]}, "512": {"accuracy": [0.75],
                         "macro_f1": [0.74]}}}  # fmt: skip
    assert run.settings["train_length"] == 128 and run.lengths == ["128", "512"]
    sweep = {"kind": "sweep", "runs": [run_results("alibi", 0, 0.7), run_results("alibi", 1, 0.8)],
             "baseline": {"tf-idf": {"128": {"accuracy": 0.63}}}}  # fmt: skip
    parsed = hf_posenc.read_results(sweep)
    assert parsed.table["alibi"]["128"]["accuracy"] == [0.7, 0.8] and parsed.baseline["tf-idf"]["128"]
    listed = hf_posenc.read_results({"results": [{"length": 256, "accuracy": 0.9}, {"length": 64, "accuracy": 0.8}]})
    assert listed.lengths == ["64", "256"]
    with pytest.raises(ValueError, match="No per-length metrics"):
        hf_posenc.read_results({"config": {}})


def test_model_card_parses_and_says_what_was_patched(tmp_path):
    model = patched("bert", "alibi", "BertForSequenceClassification")
    results = {"kind": "sweep", "runs": [run_results("alibi", 0, 0.7), run_results("alibi", 1, 0.8)]}
    text = hf_posenc.render_model_card(model, "someone/bert-alibi", results, license="apache-2.0")
    card = huggingface_hub.ModelCard(text)
    data = card.data.to_dict()
    huggingface_hub.ModelCardData(**data)  # the metadata validates
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert data["library_name"] == "transformers" and data["license"] == "apache-2.0"
    assert data["pipeline_tag"] == "text-classification" and data["datasets"] == ["pang_lee"]
    assert {"hf_posenc", "alibi", "posenc-alibi", "bert"} <= set(data["tags"])
    assert "| encoder | `alibi` | `slope_scale=1.0` | replaced | 0 | none |" in card.text
    assert 'AutoModelForSequenceClassification.from_pretrained("someone/bert-alibi")' in card.text
    assert "| alibi | 0.75 ± 0.071 | 0.8 ± 0.071 |" in card.text  # mean ± sample std of 2 seeds, at 128 / 512
    assert "| accuracy | 128 (train) | 512 |" in card.text
    assert ENCODINGS["alibi"].citation in card.text and "Bo Pang and Lillian Lee" in card.text
    assert "posenc-bert" in card.text
    # A baseline row drawn per seed shows its seeds' spread; a deterministic one its one value.
    windows = {"accuracy": 0.75, "by_seed": {"accuracy": [0.7, 0.8]}, "seeds": [0, 1], "predictions": [[1], [0]]}
    results["baseline"] = {"tf-idf": {"128": {"accuracy": 0.63}}, "tf-idf windows": {"128": windows}}
    text = hf_posenc.render_model_card(model, "someone/bert-alibi", results, license="apache-2.0")
    assert "| tf-idf | 0.63 | - |" in text and "| tf-idf windows | 0.75 ± 0.071 | - |" in text
    assert "chunks" not in text  # read in one pass: nothing to say


def test_model_card_says_when_its_results_read_documents_in_chunks():
    model = patched("bert", "alibi", "BertForSequenceClassification")
    run = run_results("alibi")
    run["config"] |= {"eval_mode": "chunked", "chunk_window": 128, "chunk_pooling": "logits"}
    run["config"]["train_windows"] = "random"
    card = hf_posenc.render_model_card(model, "someone/bert-alibi", run)
    assert "read each document in 128-token chunks" in card and "pooled per document (logits;" in card
    assert "| eval_mode | chunked |" in card and "| train_windows | random |" in card
    run["config"]["eval_mode"] = "both"  # the card's numbers are then the single pass's
    assert "chunks" not in hf_posenc.render_model_card(model, "someone/bert-alibi", run)


def test_model_card_of_a_sweep_shows_only_the_settings_its_rows_share_and_which_rows_read_in_chunks():
    model = patched("bert", "alibi", "BertForSequenceClassification")
    plain, chunked = run_results("alibi"), run_results("alibi", accuracy=0.8)
    plain["config"] |= {"eval_mode": "single", "chunk_pooling": "embeddings", "windows_per_document": 1}
    chunked["variant"] = "alibi, chunked 128"
    chunked["config"] |= {"eval_mode": "chunked", "chunk_window": 128, "chunk_pooling": "logits"}
    chunked["config"] |= {"train_windows": "random", "windows_per_document": 8}
    for runs in ([plain, chunked], [chunked, plain]):  # whichever row comes first, the card says the same
        card = hf_posenc.render_model_card(model, "someone/bert-alibi", {"kind": "sweep", "runs": runs})
        assert "| eval_mode | differs by row |" in card and "| train_windows | differs by row |" in card
        assert "| train_length | 128 |" in card and "| chunk_pooling | differs by row |" in card
        assert "The results of alibi, chunked 128 read each document in 128-token chunks" in card
    # A single pass's card leaves out the defaults of modes it did not use.
    card = hf_posenc.render_model_card(model, "someone/bert-alibi", plain)
    assert "| eval_mode | single |" in card and "chunk_pooling" not in card and "windows_per_document" not in card
    assert "chunks" not in card
    plain["config"] |= {"keep_absolute": False}
    assert "| keep_absolute | False |" in hf_posenc.render_model_card(model, "someone/bert-alibi", plain)
    learned = run_results("learned")
    learned["config"] |= {"keep_absolute": False}  # an absolute encoding keeps its table whatever this says
    card = hf_posenc.render_model_card(patched("bert", "learned"), "someone/bert-learned", learned)
    assert "keep_absolute" not in card and "| train_length | 128 |" in card


def test_model_card_refuses_results_of_another_encoding():
    with pytest.raises(ValueError, match="results are for encoding"):
        hf_posenc.render_model_card(patched("bert", "alibi"), "a/b", run_results("rope"))


def test_model_card_without_results_or_a_hub_base_model(tmp_path):
    model = patched("bart", "none")  # encoder alibi, decoder none
    card = huggingface_hub.ModelCard(hf_posenc.render_model_card(model))
    assert "base_model" not in card.data.to_dict() and "license" not in card.data.to_dict()
    assert "No recipe results were supplied" in card.text and "| decoder | `none` |" in card.text


# ---------------------------------------------------------------------------------------------------------------------
# Pushing (the Hub's HTTP API is intercepted; everything on both sides of it is real)
# ---------------------------------------------------------------------------------------------------------------------


class FakeHub:
    """Stands in for the Hub's HTTP endpoints: records calls and keeps a copy of each uploaded folder."""

    def __init__(self, root: Path) -> None:
        self.root, self.calls = root, []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, self.root / repo_id)
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/123", commit_message=kwargs["commit_message"],
            commit_description="", oid="123",
        )  # fmt: skip


@pytest.fixture
def hub(tmp_path, monkeypatch) -> FakeHub:
    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fake.create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake.upload_folder)
    return fake


def test_push_uploads_a_folder_that_reloads_exactly(hub):
    model, tokenizer = patched("bert", "alibi", "BertForSequenceClassification"), tiny_tokenizer(0)
    tokenizer.model_max_length = 1024
    result = hf_posenc.push_to_hub(model, "someone/bert-alibi", tokenizer, run_results("alibi"), private=True,
                                   token="hf_fake", license="apache-2.0")  # fmt: skip
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[0][2]["private"] is True and hub.calls[0][2]["exist_ok"] is True
    assert "alibi" in hub.calls[1][2]["commit_message"]
    assert result.commit_url.endswith("/commit/123")
    uploaded = hub.root / "someone/bert-alibi"
    names = {name for name, _ in result.files}
    assert {"README.md", "config.json", "model.safetensors", "posenc_loader.py", "tokenizer_config.json"} <= names
    assert names == {p.relative_to(uploaded).as_posix() for p in uploaded.rglob("*") if p.is_file()}
    assert_identical(model, tf.AutoModelForSequenceClassification.from_pretrained(uploaded))
    assert tf.AutoTokenizer.from_pretrained(uploaded).model_max_length == 1024
    card = huggingface_hub.ModelCard.load(uploaded / "README.md")
    assert card.data.license == "apache-2.0" and "alibi" in card.data.tags


def test_push_a_recipe_trained_model_with_its_results_file(hub, tmp_path):
    """End to end with the real recipe: train (hf_posenc.recipes), push with the results.json it wrote, reload."""
    from recipe_fixtures import make_reviews_csv, make_tiny_bert

    from hf_posenc.recipes import RunConfig, run_classification

    run = RunConfig(model=str(make_tiny_bert(tmp_path / "bert")), dataset=str(make_reviews_csv(tmp_path / "r.csv")),
                    encoding="alibi", train_length=32, eval_lengths=[32, 64, 128], epochs=1, batch_size=8,
                    learning_rate=1e-3, output_dir=str(tmp_path / "run"), progress=False)  # fmt: skip
    results = run_classification(run, keep_model=True)
    model, tokenizer = results["model"], tf.AutoTokenizer.from_pretrained(run.model)
    hf_posenc.push_to_hub(model, "someone/tiny-alibi", tokenizer, tmp_path / "run" / "results.json", token="hf_fake")
    uploaded = hub.root / "someone/tiny-alibi"
    batch = dict(tokenizer(["good w1 w2 " * 30, "bad w3"], padding=True, return_tensors="pt"))
    assert_identical(model.eval(), hf_posenc.from_pretrained(uploaded), batch)
    card = huggingface_hub.ModelCard.load(uploaded / "README.md")
    accuracy = [results["metrics"][n]["accuracy"] for n in ("32", "64", "128")]
    assert "| accuracy | 32 (train) | 64 | 128 |" in card.text
    assert f"| alibi | {accuracy[0]:.4g} | {accuracy[1]:.4g} | {accuracy[2]:.4g} |" in card.text
    assert card.data.datasets is None and f"| dataset | {run.dataset} |" in card.text  # a local file: no Hub id
    assert "| seeds | 0 |" in card.text


def test_model_card_of_a_sweep_keeps_only_this_models_variants():
    sweep = {"kind": "sweep", "runs": [run_results("alibi", 0, 0.7), run_results("rope", 0, 0.9)]}
    card = hf_posenc.render_model_card(patched("bert", "alibi"), "a/b", sweep)
    assert "| alibi | 0.7 | 0.75 |" in card and "| rope |" not in card
    with pytest.raises(ValueError, match="results are for encoding"):
        hf_posenc.render_model_card(patched("bert", "t5"), "a/b", sweep)


def test_push_dry_run_lists_files_and_uploads_nothing(hub, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    result = hf_posenc.push_to_hub(patched("bert", "rope"), "someone/bert-rope", dry_run=True)
    printed = capsys.readouterr().out
    assert hub.calls == [] and result.commit_url is None
    assert "Dry run: would upload" in printed and "https://huggingface.co/someone/bert-rope" in printed
    for name, _ in result.files:
        assert name in printed
    assert dict(result.files)["config.json"] > 0


def test_push_errors(hub, monkeypatch, tmp_path):
    model = patched("bert", "alibi")
    with pytest.raises(ValueError, match="Invalid Hub repo id"):
        hf_posenc.push_to_hub(model, "not a/valid//id", token="hf_fake")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(ValueError, match="No Hugging Face token"):
        hf_posenc.push_to_hub(model, "someone/bert-alibi")
    with pytest.raises(ValueError, match="not patched"):
        hf_posenc.push_to_hub(tiny_model("bert"), "someone/bert", token="hf_fake")

    def unreachable(api, repo_id, **kwargs):
        raise huggingface_hub.errors.HTTPError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    with pytest.raises(PushError, match="'someone/bert-alibi' failed: .*name resolution"):
        hf_posenc.push_to_hub(model, "someone/bert-alibi", token="hf_fake")
    assert hub.calls == []


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """An unpatched tiny BART with its tokenizer, as a user would start from."""
    model = tiny_model("bart", "BartForConditionalGeneration")
    return save(model, tmp_path / "bart", tiny_tokenizer(1))


def test_cli_patch_inspect_and_push(checkpoint, tmp_path, capsys, hub):
    output = tmp_path / "patched"
    argv = ["patch", str(checkpoint), str(output), "--encoder", "alibi", "--decoder", "rope",
            "--decoder-option", "base=500", "--decoder-option", "scaling=null"]  # fmt: skip
    assert cli.main(argv) == 0
    model = hf_posenc.from_pretrained(output)
    assert type(model) is tf.BartForConditionalGeneration
    stacks = hf_posenc.patch_spec(model)["stacks"]
    assert stacks["encoder"]["encoding"] == "alibi" and stacks["decoder"]["options"]["base"] == 500.0
    assert (output / "tokenizer_config.json").is_file()
    capsys.readouterr()

    assert cli.main(["inspect", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "hf_posenc-patched posenc-bart" in printed and "BartForConditionalGeneration" in printed
    assert "decoder: rope (base=500.0" in printed and "absolute table replaced" in printed

    assert cli.main(["push", str(output), "someone/bart-mixed", "--dry-run"]) == 0
    assert "would upload" in capsys.readouterr().out and hub.calls == []
    assert cli.main(["push", str(output), "someone/bart-mixed", "--token", "hf_fake"]) == 0
    assert "Pushed" in capsys.readouterr().out
    assert_identical(model, hf_posenc.from_pretrained(hub.root / "someone/bart-mixed"))


def test_cli_patch_keep_absolute_and_max_length(checkpoint, tmp_path):
    output = tmp_path / "hybrid"
    assert cli.main(["patch", str(checkpoint), str(output), "--encoding", "t5", "--keep-absolute"]) == 0
    assert hf_posenc.patch_spec(hf_posenc.from_pretrained(output))["stacks"]["encoder"]["keep_absolute"] is True
    longer = tmp_path / "longer"
    assert cli.main(["patch", str(checkpoint), str(longer), "--encoding", "alibi", "--max-length", "512"]) == 0
    assert tf.AutoTokenizer.from_pretrained(longer).model_max_length == 512


def test_cli_patch_attention_options_are_saved_and_checked(checkpoint, tmp_path, capsys):
    output = tmp_path / "local"
    argv = ["patch", str(checkpoint), str(output), "--encoding", "rope", "--attention-scale", "log",
            "--attention-scale-length", "16", "--attention-window", "8", "--global-tokens", "0", "1"]  # fmt: skip
    assert cli.main(argv) == 0
    stacks = hf_posenc.patch_spec(hf_posenc.from_pretrained(output))["stacks"]
    for stack in ("encoder", "decoder"):
        assert stacks[stack]["attention_scale"] == "log" and stacks[stack]["attention_scale_length"] == 16
        assert stacks[stack]["attention_window"] == 8 and list(stacks[stack]["global_tokens"]) == [0, 1]
    capsys.readouterr()
    bad = ["patch", str(checkpoint), str(tmp_path / "bad"), "--encoding", "rope", "--attention-window", "0"]
    assert cli.main(bad) == 2
    assert "attention_window" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_cli_errors(checkpoint, tmp_path, capsys):
    assert cli.main(["patch", str(checkpoint), str(tmp_path / "x")]) == 2
    assert "Name an encoding" in capsys.readouterr().err
    assert cli.main(["patch", str(checkpoint), str(tmp_path / "x"), "--encoding", "rope", "--option", "base"]) == 2
    assert "key=value" in capsys.readouterr().err
    assert cli.main(["inspect", str(tmp_path / "missing")]) == 2


# ---------------------------------------------------------------------------------------------------------------------
# A real checkpoint
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_round_trip(tmp_path):
    from hf_posenc.recipes.data import minilm_checkpoint

    folder = minilm_checkpoint()
    model = tf.AutoModel.from_pretrained(folder).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    hf_posenc.patch_model(model, "alibi", max_length=1024, tokenizer=tokenizer)
    saved = save(model, tmp_path, tokenizer)
    reloaded = tf.AutoModel.from_pretrained(saved)
    batch = tokenizer(["a long movie review " * 200], return_tensors="pt", truncation=True)
    assert batch["input_ids"].shape[1] > 512
    with torch.no_grad():
        difference = (reloaded(**batch).last_hidden_state - model(**batch).last_hidden_state).abs().max().item()
    assert difference == 0.0
    assert tf.AutoTokenizer.from_pretrained(saved).model_max_length == 1024
