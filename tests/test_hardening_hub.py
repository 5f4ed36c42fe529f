"""Hub and CLI edges a demanding user meets: sentence-transformers folders keep their modules, new task heads on
patched checkpoints, output paths, truncated files, missing folders that never reach the Hub, one-line CLI errors,
atomic writes, the tokenizer limit after unpatching, and frozen position parameters under peft."""

from __future__ import annotations

import argparse
import json
import logging
import os
import warnings
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers as tf
from test_hub import tiny_tokenizer
from tiny_models import tiny_model, token_ids

import hf_posenc
from hf_posenc import cli
from hf_posenc.hub import folders
from hf_posenc.trainable import FrozenPositionsWarning

# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


def sentence_transformers_folder(folder: Path) -> Path:
    """A tiny sentence-transformers checkpoint: Transformer, CLS Pooling (not the default mean) and Normalize."""
    st = pytest.importorskip("sentence_transformers")
    modules = pytest.importorskip("sentence_transformers.sentence_transformer.modules")
    model, tokenizer = tiny_model("bert"), tiny_tokenizer(0)
    model.save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    transformer = modules.Transformer(str(folder / "hf"), max_seq_length=32)
    pooling = modules.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="cls")
    st.SentenceTransformer(modules=[transformer, pooling, modules.Normalize()], device="cpu").save(str(folder / "st"))
    return folder / "st"


def embed(folder: Path) -> tuple[list[str], torch.Tensor]:
    """The module classes a SentenceTransformer loads from `folder`, and its embeddings of two sentences."""
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(folder), device="cpu")
    kinds = [type(module).__name__ for module in model]
    sentences = ["w1 w2 w3 w4 w5", "w7 w8 w9"]
    return kinds, model.encode(sentences, convert_to_tensor=True)


class HubUnreachable(RuntimeError):
    """Raised by every mocked huggingface_hub network call."""


@pytest.fixture
def offline_hub(monkeypatch) -> list[str]:
    """huggingface_hub's network API mocked to fail: the calls that reach it are recorded, then refused."""
    calls: list[str] = []

    def refuse(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise ConnectionError(f"{name}: the Hub is unreachable in this test")

        return call

    for name in ("create_repo", "upload_folder", "model_info", "repo_info"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, refuse(name))
    for name in ("snapshot_download", "hf_hub_download"):
        monkeypatch.setattr(huggingface_hub, name, refuse(name))
    monkeypatch.setattr(huggingface_hub.file_download, "hf_hub_download", refuse("hf_hub_download"))
    return calls


def bert_checkpoint(folder: Path, encoding: str = "t5", head: str | None = "BertForSequenceClassification") -> Path:
    model = hf_posenc.patch_model(tiny_model("bert", head), encoding)
    model.save_pretrained(folder)
    tiny_tokenizer(0).save_pretrained(folder)
    return folder


def error_lines(stderr: str) -> list[str]:
    """The lines hf-posenc wrote to stderr (progress bars of transformers aside); never a traceback."""
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("hf-posenc ") or "error" in line.lower()]


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ---------------------------------------------------------------------------------------------------------------------
# sentence-transformers folders keep Pooling and Normalize
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["patch", "extend"])
def test_hub_commands_keep_the_sentence_transformers_modules(tmp_path, command):
    source = sentence_transformers_folder(tmp_path)
    kinds, _ = embed(source)
    output = tmp_path / "out"
    argv = (
        ["patch", str(source), str(output), "--encoding", "alibi", "--max-length", "128"]
        if command == "patch"
        else ["extend", str(source), str(output), "--max-length", "128"]
    )
    assert cli.main(argv) == 0
    found, embeddings = embed(output)
    assert found == kinds == ["Transformer", "Pooling", "Normalize"]
    norms = embeddings.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), norms
    assert (output / "1_Pooling" / "config.json").read_bytes() == (source / "1_Pooling" / "config.json").read_bytes()
    assert max_seq_length(output) == 128


def max_seq_length(folder: Path) -> int:
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(folder), device="cpu").max_seq_length


def test_patch_without_max_length_keeps_the_sentence_transformers_limit(tmp_path):
    source = sentence_transformers_folder(tmp_path)
    assert cli.main(["patch", str(source), str(tmp_path / "out"), "--encoding", "rope"]) == 0
    assert max_seq_length(tmp_path / "out") == 32


def test_push_uploads_the_sentence_transformers_modules(tmp_path, capsys):
    source = sentence_transformers_folder(tmp_path)
    assert cli.main(["patch", str(source), str(tmp_path / "out"), "--encoding", "alibi"]) == 0
    capsys.readouterr()
    assert cli.main(["push", str(tmp_path / "out"), "someone/st-alibi", "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "modules.json" in listing and "1_Pooling/config.json" in listing


@pytest.mark.slow
def test_minilm_patch_keeps_normalized_embeddings(tmp_path):
    folder = hf_posenc.hub.assets.minilm_checkpoint()
    assert cli.main(["patch", str(folder), str(tmp_path / "out"), "--encoding", "alibi"]) == 0
    kinds, embeddings = embed(tmp_path / "out")
    assert kinds == ["Transformer", "Pooling", "Normalize"]
    norms = embeddings.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), norms


# ---------------------------------------------------------------------------------------------------------------------
# New heads: transformers' from_pretrained keyword arguments
# ---------------------------------------------------------------------------------------------------------------------


def test_a_new_number_of_labels_needs_ignore_mismatched_sizes(tmp_path):
    folder = bert_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="ignore_mismatched_sizes=True") as error:
        tf.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=5)
    assert "edited" not in str(error.value)
    model = tf.AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=5, ignore_mismatched_sizes=True, low_cpu_mem_usage=True, use_safetensors=True
    )
    assert model.classifier.weight.shape == (5, model.config.hidden_size) and model.config.num_labels == 5
    assert len(model.config.id2label) == 5
    assert model(input_ids=token_ids(1, 12)).logits.shape == (1, 5)


def test_new_head_is_initialized_and_reported_like_transformers(tmp_path, caplog):
    folder = bert_checkpoint(tmp_path)
    reference = hf_posenc.from_pretrained(folder)
    with caplog.at_level(logging.WARNING):
        model, info = hf_posenc.from_pretrained(
            folder, "BertForTokenClassification", num_labels=3, ignore_mismatched_sizes=True, output_loading_info=True
        )
    assert type(model) is tf.BertForTokenClassification
    assert [k for k, _, _ in info["mismatched_keys"]] == ["classifier.weight", "classifier.bias"]
    assert "LOAD REPORT" in caplog.text and "classifier.weight" in caplog.text
    # transformers' _init_weights: normal(0, initializer_range) weights, zero bias
    std = model.classifier.weight.std().item()
    assert abs(std - model.config.initializer_range) < 0.5 * model.config.initializer_range, std
    assert torch.count_nonzero(model.classifier.bias) == 0
    # the position encoding and the encoder came from the checkpoint, bit for bit
    expected = reference.state_dict()
    for key, tensor in model.state_dict().items():
        if key.startswith("bert.encoder") or key.startswith("bert.embeddings"):
            assert torch.equal(tensor, expected[key]), key


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_sequence_checkpoint_as_token_classification(tmp_path, model_type):
    sequence = {"bert": "BertForSequenceClassification", "roberta": "RobertaForSequenceClassification"}[model_type]
    model = hf_posenc.patch_model(tiny_model(model_type, sequence), "t5")
    model.save_pretrained(tmp_path)
    token = tf.AutoModelForTokenClassification.from_pretrained(tmp_path)
    assert type(token).__name__ == sequence.replace("Sequence", "Token")
    assert token(input_ids=token_ids(1, 12)).logits.shape == (1, 12, 2)
    five = tf.AutoModelForTokenClassification.from_pretrained(tmp_path, num_labels=5, ignore_mismatched_sizes=True)
    assert five(input_ids=token_ids(1, 12)).logits.shape == (1, 12, 5)


def test_loading_options_of_transformers_are_accepted(tmp_path):
    folder = bert_checkpoint(tmp_path)
    model = hf_posenc.from_pretrained(
        folder, torch_dtype=torch.bfloat16, device_map="cpu", low_cpu_mem_usage=False, hidden_dropout_prob=0.25
    )
    assert next(model.parameters()).dtype == torch.bfloat16 and model.config.hidden_dropout_prob == 0.25
    assert hf_posenc.from_pretrained(folder, dtype="auto", device_map={"": "cpu"}).device.type == "cpu"
    assert hf_posenc.from_pretrained(folder, device_map="auto") is not None


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"frobnicate": 1}, TypeError, "frobnicate"),
        ({"use_safetensors": False}, ValueError, "safetensors only"),
        ({"device_map": {"bert": "cpu", "classifier": "cpu"}}, ValueError, "one device"),
    ],
)
def test_unknown_or_unsupported_loading_options_are_refused_by_name(tmp_path, kwargs, error, message):
    folder = bert_checkpoint(tmp_path)
    with pytest.raises(error, match=message):
        hf_posenc.from_pretrained(folder, **kwargs)


def test_position_weights_still_load_strictly_with_ignore_mismatched_sizes(tmp_path):
    folder = bert_checkpoint(tmp_path, "relative_key")
    config = json.loads((folder / "config.json").read_text())
    config["posenc"]["stacks"]["encoder"]["options"]["max_distance"] = 10
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="edited"):
        hf_posenc.from_pretrained(folder, ignore_mismatched_sizes=True)


def test_plain_checkpoint_takes_the_same_options(tmp_path):
    folder = tmp_path / "plain"
    tiny_model("bert", "BertForSequenceClassification").save_pretrained(folder)
    model = hf_posenc.from_pretrained(folder, num_labels=4, ignore_mismatched_sizes=True)
    assert model.classifier.weight.shape[0] == 4
    with pytest.raises(TypeError, match="frobnicate"):
        hf_posenc.from_pretrained(folder, frobnicate=1)


# ---------------------------------------------------------------------------------------------------------------------
# Output paths, truncated files, missing folders
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["a file in the input", "the input", "inside the input", "an existing file"])
def test_patch_refuses_bad_output_paths_before_any_work(tmp_path, capsys, where):
    folder = bert_checkpoint(tmp_path / "ckpt")
    (tmp_path / "notes.txt").write_text("keep me")
    output = {
        "a file in the input": folder / "config.json",
        "the input": folder,
        "inside the input": folder / "sub",
        "an existing file": tmp_path / "notes.txt",
    }[where]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for command in (["patch", str(folder), str(output), "--encoding", "alibi", "--replace"],
                    ["extend", str(folder), str(output), "--max-length", "64"]):  # fmt: skip
        assert cli.main(command) == 2
        error = capsys.readouterr().err
        assert len(error_lines(error)) == 1 and "output" in error and "Saved" not in error
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("command", ["patch", "inspect", "from_pretrained"])
def test_truncated_safetensors_is_named(tmp_path, capsys, command):
    folder = bert_checkpoint(tmp_path / "ckpt")
    truncate(folder / "model.safetensors")
    if command == "from_pretrained":
        with pytest.raises(ValueError, match=r"model\.safetensors is incomplete or corrupt"):
            hf_posenc.from_pretrained(folder)
        return
    argv = (
        ["inspect", str(folder)]
        if command == "inspect"
        else ["patch", str(folder), str(tmp_path / "o"), "--encoding", "rope", "--replace"]
    )
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "model.safetensors is incomplete or corrupt" in error and len(error_lines(error)) == 1


def test_truncated_plain_checkpoint_is_named(tmp_path):
    folder = tmp_path / "plain"
    tiny_model("bert").save_pretrained(folder)
    truncate(folder / "model.safetensors", keep=0.999)
    with pytest.raises(ValueError, match="incomplete or corrupt"):
        hf_posenc.from_pretrained(folder)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_a_truncated_tokenizer_file_is_named_not_dropped(tmp_path, capsys, name):
    folder = bert_checkpoint(tmp_path / "ckpt")
    truncate(folder / name, keep=0.5)
    assert cli.main(["patch", str(folder), str(tmp_path / "out"), "--encoding", "rope", "--replace"]) == 2
    error = capsys.readouterr().err
    assert f"{name} is not valid JSON" in error and len(error_lines(error)) == 1
    assert not (tmp_path / "out").exists()


def test_truncated_json_is_named(tmp_path, capsys):
    folder = bert_checkpoint(tmp_path / "ckpt")
    truncate(folder / "config.json", keep=0.5)
    assert cli.main(["inspect", str(folder)]) == 2
    assert "config.json is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["missing_dir", "./missing_dir", "../missing_dir", "a/b/c/missing", "/abs/missing"])
def test_push_dry_run_of_a_missing_folder_never_touches_the_network(tmp_path, capsys, offline_hub, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["push", name, "you/repo", "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert "does not exist" in error and len(error_lines(error)) == 1
    assert offline_hub == []


@pytest.mark.parametrize("name", ["./missing_dir", "../missing_dir", "a/b/c/missing", "/abs/missing"])
def test_a_path_looking_name_that_does_not_exist_is_a_local_error(tmp_path, capsys, offline_hub, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["patch", name, str(tmp_path / "out"), "--encoding", "alibi"]) == 2
    error = capsys.readouterr().err
    assert "local folder" in error and "does not exist" in error and len(error_lines(error)) == 1
    assert offline_hub == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hf_posenc.from_pretrained(name)
    assert offline_hub == []


def test_a_hub_id_that_is_not_local_says_it_downloads_then_fails_in_one_line(tmp_path, capsys, offline_hub):
    assert cli.main(["patch", "missing_dir", str(tmp_path / "out"), "--encoding", "alibi"]) == 2
    error = capsys.readouterr().err
    assert error.index("downloading it from the Hugging Face Hub") < error.index("error:")
    assert len(error_lines(error)) == 2 and "unreachable" in error and offline_hub == ["snapshot_download"]
    assert "not a local folder (./missing_dir does not exist)" in error


def test_dry_run_stays_offline_and_a_real_push_says_it_contacts_the_hub(tmp_path, capsys, offline_hub):
    folder = bert_checkpoint(tmp_path / "ckpt")
    assert cli.main(["push", str(folder), "you/repo", "--dry-run"]) == 0
    assert "would upload" in capsys.readouterr().out and offline_hub == []
    assert cli.main(["push", str(folder), "you/repo", "--token", "hf_fake"]) == 1
    error = capsys.readouterr().err
    assert error.index("Contacting the Hugging Face Hub") < error.index("error:")
    assert offline_hub == ["create_repo"] and "Traceback" not in error


# ---------------------------------------------------------------------------------------------------------------------
# The CLI's help and errors
# ---------------------------------------------------------------------------------------------------------------------


def hub_parsers() -> dict[str, argparse.ArgumentParser]:
    root = cli.build_parser()
    commands = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {name: commands[name] for name in ("patch", "inspect", "push", "extend")}


def test_every_hub_option_has_a_help_text_and_shows_its_default():
    for name, parser in hub_parsers().items():
        assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), name
        for action in parser._actions:
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, label
        text = parser.format_help()
        options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
        assert text.count("(default:") >= len(options), name


@pytest.mark.parametrize(
    "setup",
    ["config is a directory", "unreadable index", "results not json"],
)
def test_os_and_json_errors_are_one_line(tmp_path, capsys, setup):
    folder = bert_checkpoint(tmp_path / "ckpt")
    if setup == "config is a directory":
        (folder / "config.json").unlink()
        (folder / "config.json").mkdir()
        argv = ["inspect", str(folder)]
    elif setup == "unreadable index":
        (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
        (folder / "model.safetensors.index.json").write_text('{"weight_map": ')
        argv = ["inspect", str(folder)]
    else:
        (tmp_path / "results.json").write_text("{oops")
        argv = ["push", str(folder), "you/repo", "--dry-run", "--results", str(tmp_path / "results.json")]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert len(error_lines(error)) == 1


# ---------------------------------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------------------------------


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = folders.write_json_atomic(tmp_path / "settings.json", {"max_seq_length": 256})

    def interrupted(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        folders.write_json_atomic(path, {"max_seq_length": 1})
    assert json.loads(path.read_text()) == {"max_seq_length": 256}
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]  # no temporary file left behind


def test_update_max_seq_length_is_atomic_and_names_a_corrupt_file(tmp_path, monkeypatch):
    path = tmp_path / folders.SENTENCE_TRANSFORMERS_CONFIG
    path.write_text(json.dumps({"max_seq_length": 256, "do_lower_case": False}))
    replaced = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append(Path(b).name), real(a, b)))
    assert hf_posenc.update_max_seq_length(tmp_path, 1024) is True
    assert replaced == [path.name] and json.loads(path.read_text())["max_seq_length"] == 1024
    path.write_text('{"max_seq_length": 2')
    with pytest.raises(ValueError, match=f"{path.name} is not valid JSON"):
        hf_posenc.update_max_seq_length(tmp_path, 2048)


def test_model_card_is_written_atomically(tmp_path, monkeypatch):
    replaced = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append(Path(b).name), real(a, b)))
    model = hf_posenc.patch_model(tiny_model("bert"), "alibi")
    hf_posenc.save_for_hub(model, tmp_path)
    assert "README.md" in replaced and (tmp_path / "README.md").read_text().startswith("---")


# ---------------------------------------------------------------------------------------------------------------------
# unpatch_model restores the tokenizer; frozen position parameters under peft
# ---------------------------------------------------------------------------------------------------------------------


def test_unpatch_restores_the_tokenizer_limit():
    model, tokenizer = tiny_model("bert"), tiny_tokenizer(0)
    tokenizer.model_max_length = 64
    hf_posenc.patch_model(model, "alibi", max_length=2048, tokenizer=tokenizer)
    assert tokenizer.model_max_length == 2048
    hf_posenc.patch_model(model, "rope", replace=True, max_length=4096, tokenizer=tokenizer)
    hf_posenc.unpatch_model(model)
    assert tokenizer.model_max_length == 64 and tokenizer.init_kwargs.get("model_max_length") in (None, 64)
    batch = tokenizer([" ".join(["w5"] * 1000)], truncation=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] == 64
    with torch.no_grad():
        model(**batch)  # fits the restored table


def test_the_tokenizer_is_held_weakly():
    model, tokenizer = tiny_model("bert"), tiny_tokenizer(0)
    hf_posenc.patch_model(model, "alibi", max_length=2048, tokenizer=tokenizer)
    del tokenizer
    hf_posenc.unpatch_model(model)  # nothing to restore, no error


def test_position_parameters_names_what_the_patch_installed():
    model = hf_posenc.patch_model(tiny_model("bert"), "t5")
    parameters = hf_posenc.position_parameters(model)
    assert parameters and all(".posenc." in name for name in parameters)
    assert set(parameters) == {n for n, _ in model.named_parameters() if "posenc" in n}
    assert hf_posenc.position_parameters(tiny_model("bert")) == {}


def test_peft_lora_warns_once_about_frozen_fresh_position_parameters_and_the_fix_trains_them():
    peft = pytest.importorskip("peft")
    model = hf_posenc.patch_model(tiny_model("bert", "BertForSequenceClassification"), "t5")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["query", "value"]))
    lora.train()
    batch = {"input_ids": token_ids(2, 16), "labels": torch.tensor([0, 1])}
    with pytest.warns(FrozenPositionsWarning, match="position_parameters") as caught:
        lora(**batch).loss.backward()
        lora(**batch).loss.backward()
    assert len([w for w in caught if w.category is FrozenPositionsWarning]) == 1
    assert "posenc" in str(caught[0].message)

    fresh = hf_posenc.patch_model(tiny_model("bert", "BertForSequenceClassification"), "t5")
    lora = peft.get_peft_model(fresh, peft.LoraConfig(r=4, target_modules=["query", "value"]))
    parameters = hf_posenc.position_parameters(lora)
    for parameter in parameters.values():
        parameter.requires_grad_(True)
    lora.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrozenPositionsWarning)
        lora(**batch).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in parameters.values())


def test_peft_modules_to_save_copies_do_not_silence_the_warning():
    """peft's trainable copy of a `posenc` module is not what the attention backend runs: the warning still fires."""
    peft = pytest.importorskip("peft")
    model = hf_posenc.patch_model(tiny_model("bert", "BertForSequenceClassification"), "t5")
    modules = sorted({name.rsplit(".posenc.", 1)[0] + ".posenc" for name in hf_posenc.position_parameters(model)})
    config = peft.LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=modules)
    lora = peft.get_peft_model(model, config)
    lora.train()
    with pytest.warns(FrozenPositionsWarning, match="modules_to_save"):
        lora(input_ids=token_ids(2, 16), labels=torch.tensor([0, 1])).loss.backward()


def test_no_warning_for_loaded_position_parameters_or_eval(tmp_path):
    peft = pytest.importorskip("peft")
    folder = bert_checkpoint(tmp_path)
    model = hf_posenc.from_pretrained(folder)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["query", "value"]))
    lora.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrozenPositionsWarning)
        lora(input_ids=token_ids(2, 16), labels=torch.tensor([0, 1])).loss.backward()
        lora.eval()
        fresh = hf_posenc.patch_model(tiny_model("bert"), "t5")
        fresh.requires_grad_(False)
        with torch.no_grad():
            fresh(input_ids=token_ids(1, 8))


@pytest.mark.parametrize("options", [{"attention_scale": "log"}, {"attention_window": 4}])
def test_a_training_forward_of_a_learned_table_run_by_the_backend(options):
    """`learned` with attention scaling or local attention runs in the posenc backend with no relative encoding
    attached: the frozen-parameter check must handle attention modules that carry no encoding."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    model = hf_posenc.patch_model(BertForSequenceClassification(config), "learned", **options).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", hf_posenc.trainable.FrozenPositionsWarning)
        loss = model(input_ids=torch.randint(0, 50, (2, 12)), labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    ("error", "hinted"), [(RuntimeError("shape mismatch"), True), (KeyError("x"), True), (ValueError("bad"), False)]
)
def test_cli_errors_are_one_line_and_traceback_shows_them_whole(tmp_path, capsys, monkeypatch, error, hinted):
    def failing(checkpoint):
        raise error

    monkeypatch.setattr("hf_posenc.hub.cli.inspect_checkpoint", failing)
    assert cli.main(["inspect", str(tmp_path)]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("hf-posenc inspect: error:")
    assert ("--traceback inspect" in lines[0]) is hinted
    with pytest.raises(type(error)):
        cli.main(["--traceback", "inspect", str(tmp_path)])
