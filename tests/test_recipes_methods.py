"""The "train short, test long" methods of the recipes: per-document predictions, chunked evaluation, position
augmentation, random training windows, cheap adaptation (cached masked-LM adaptation, position-only training, LoRA).

Every test runs a tiny BERT on the fixture reviews (`recipe_fixtures`); the checks on the real all-MiniLM-L6-v2 are
marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from recipe_fixtures import make_recipe_assets, tiny_run_config

from hf_posenc.recipes.chunked import ChunkingCollator, chunk_starts, chunked_document_logits
from hf_posenc.recipes.classification import MeanPoolingClassifier, run_classification
from hf_posenc.recipes.settings import RunConfig, settings_differences


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    return make_recipe_assets(tmp_path_factory.mktemp("methods"))


def tiny_run(assets, tmp_path: Path, **overrides) -> RunConfig:
    values = dict(pooling="mean", train_length=16, eval_lengths=[16, 64], max_steps=4)
    return tiny_run_config(assets, tmp_path / "run", **{**values, **overrides})


def saved(run: RunConfig) -> dict:
    return json.loads((Path(run.output_dir) / "results.json").read_text())


# ---------------------------------------------------------------------------------------------------------------------
# Per-document predictions
# ---------------------------------------------------------------------------------------------------------------------


def test_results_hold_per_document_predictions_that_reproduce_the_scores(assets, tmp_path):
    run = tiny_run(assets, tmp_path)
    run_classification(run)
    results = saved(run)
    predictions = results["predictions"]
    n = results["data"]["test_examples"]
    assert predictions["document_index"] == list(range(n))
    assert len(predictions["labels"]) == n and set(predictions["labels"]) <= {0, 1}
    for length, found in predictions["single"].items():
        assert len(found) == n and all(isinstance(p, int) for p in found)
        accuracy = sum(p == y for p, y in zip(found, predictions["labels"])) / n
        assert accuracy == pytest.approx(results["metrics"][length]["accuracy"], abs=1e-5)
    # the same split seed gives the same documents in the same order, whatever the training seed
    other = tiny_run(assets, tmp_path, seed=3, output_dir=str(tmp_path / "other"))
    run_classification(other)
    assert saved(other)["predictions"]["labels"] == predictions["labels"]


def test_document_labels_follow_the_test_split_not_the_length_sorted_batches(assets, tmp_path):
    from hf_posenc.recipes.classification import classification_splits

    run = tiny_run(assets, tmp_path)
    run_classification(run)
    _, test = classification_splits(run)
    assert saved(run)["predictions"]["labels"] == list(test["label"])


# ---------------------------------------------------------------------------------------------------------------------
# Chunked evaluation
# ---------------------------------------------------------------------------------------------------------------------


def test_chunk_starts_cover_the_document_disjoint_or_overlapping():
    assert chunk_starts(0, 6, 6) == [0]
    assert chunk_starts(6, 6, 6) == [0]
    assert chunk_starts(13, 6, 6) == [0, 6, 12]
    assert chunk_starts(10, 6, 3) == [0, 3, 6]  # the chunk at 6 reaches the end


@pytest.mark.parametrize("pooling", ["embeddings", "logits"])
@pytest.mark.parametrize("stride", [None, 3])
def test_chunked_evaluation_equals_a_hand_computation(assets, pooling, stride):
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(assets["bert"])
    model = MeanPoolingClassifier(AutoModel.from_pretrained(assets["bert"]), 2).eval()
    documents = [list(range(5, 25)), list(range(30, 37)), [8]]  # 20, 7 and 1 tokens
    length, window = 18, 8  # the single pass at 18 reads 16 document tokens; chunks hold 6
    batch = ChunkingCollator(tokenizer, length, window, stride)([{"ids": d, "label": 0} for d in documents])
    with torch.no_grad():
        found = chunked_document_logits(model, batch, pooling, model)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    step = stride or 6
    with torch.no_grad():
        for document, ids in enumerate(documents):
            ids = ids[:16]
            starts = [0]
            while starts[-1] + 6 < len(ids):
                starts.append(starts[-1] + step)
            embeddings, logits, weights = [], [], []
            for start in starts:
                chunk = torch.tensor([[cls, *ids[start : start + 6], sep]])
                hidden = model.encoder(input_ids=chunk, attention_mask=torch.ones_like(chunk)).last_hidden_state
                embeddings.append(hidden[0].mean(0))
                logits.append(model.classifier(hidden[0].mean(0)))
                weights.append(chunk.shape[1])
            if pooling == "logits":
                expected = torch.stack(logits).mean(0)
            else:
                weighted = sum(w * e for w, e in zip(weights, embeddings)) / sum(weights)
                expected = model.classifier(weighted)
            torch.testing.assert_close(found[document], expected, atol=1e-6, rtol=0)


def test_chunked_and_single_results_sit_side_by_side(assets, tmp_path):
    run = tiny_run(assets, tmp_path, eval_mode="both", chunk_window=16, chunk_pooling="logits")
    results = run_classification(run)
    assert set(results["metrics_by_mode"]) == {"single", "chunked"}
    assert results["metrics"] == results["metrics_by_mode"]["single"]
    stored = saved(run)
    assert stored["config"]["eval_mode"] == "both" and stored["config"]["chunk_pooling"] == "logits"
    n = stored["data"]["test_examples"]
    for mode in ("single", "chunked"):
        assert set(stored["predictions"][mode]) == {"16", "64"}
        for length, found in stored["predictions"][mode].items():
            accuracy = sum(p == y for p, y in zip(found, stored["predictions"]["labels"])) / n
            assert accuracy == pytest.approx(stored["metrics_by_mode"][mode][length]["accuracy"], abs=1e-5)
    # at the window's own length a document is one chunk: chunked reads exactly what the single pass reads
    assert stored["predictions"]["chunked"]["16"] == stored["predictions"]["single"]["16"]


def test_chunked_evaluation_alone_is_labelled_and_reported_as_the_metrics(assets, tmp_path):
    run = tiny_run(assets, tmp_path, eval_mode="chunked", eval_lengths=[64])
    results = run_classification(run)
    assert run.variant.endswith(" chunked")
    assert list(results["metrics_by_mode"]) == ["chunked"] and results["metrics"]["64"]["n"] > 0
    assert (Path(run.output_dir) / "results.md").is_file()


def test_chunked_evaluation_alone_reads_past_a_learned_table(assets, tmp_path):
    run = tiny_run(assets, tmp_path, encoding="learned", eval_mode="chunked", eval_lengths=[16, 200])
    results = run_classification(run)
    assert results["metrics"]["200"]["n"] == results["data"]["test_examples"]
    with pytest.raises(ValueError, match="--max_length 200"):  # the single pass at 200 needs a longer table
        run_classification(tiny_run(assets, tmp_path, encoding="learned", eval_mode="both", eval_lengths=[16, 200]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"eval_mode": "sliding"}, "eval_mode must be one of"),
        ({"eval_mode": "chunked", "chunk_pooling": "max"}, "chunk_pooling must be one of"),
        (
            {"eval_mode": "chunked", "chunk_window": 12, "chunk_stride": 11},
            "chunk_stride must be between 1 and the 10 document tokens",
        ),
        ({"eval_mode": "chunked", "chunk_window": 2}, "at least 4 tokens"),
        ({"eval_mode": "chunked", "pooling": "cls"}, "--pooling mean, or --chunk_pooling logits"),
        ({"eval_mode": "both", "encoding": "learned", "eval_lengths": [16], "chunk_window": 100}, "--max_length 100"),
    ],
)
def test_bad_chunk_settings_are_refused_before_training(assets, tmp_path, monkeypatch, overrides, message):
    import hf_posenc.recipes.classification as classification

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(classification, "fit", no_training)
    with pytest.raises(ValueError, match=message):
        run_classification(tiny_run(assets, tmp_path, **overrides))


# ---------------------------------------------------------------------------------------------------------------------
# Position augmentation
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Adapted checkpoints go to a private cache (shared by the tests of this module)."""
    monkeypatch.setenv("HF_POSENC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.parametrize("method", ["pose", "randomized"])
def test_position_augmentation_reaches_the_model_and_is_recorded(assets, tmp_path, monkeypatch, method):
    seen, evaluated = [], []
    original = MeanPoolingClassifier.forward

    def spy(self, input_ids, attention_mask, labels=None, **inputs):
        (seen if self.training else evaluated).append(inputs.get("position_ids"))
        return original(self, input_ids, attention_mask, labels, **inputs)

    monkeypatch.setattr(MeanPoolingClassifier, "forward", spy)
    run = tiny_run(assets, tmp_path, position_augmentation=method)
    run_classification(run)
    assert len(seen) == 4 and all(ids is not None for ids in seen)
    # Randomized positions are drawn at test time too (Ruoss et al.); PoSE evaluates with plain positions.
    assert evaluated and all((ids is not None) == (method == "randomized") for ids in evaluated)
    if method == "randomized":  # drawn from [0, 64) whatever the evaluation length (16 or 64)
        assert all(int(ids.max()) < 64 for ids in evaluated)
        assert any(int(ids.max()) >= ids.shape[-1] for ids in evaluated if ids.shape[-1] <= 16)
    assert max(int(ids.max()) for ids in seen) < 64  # the target defaults to the largest evaluation length
    assert max(int(ids.max()) for ids in seen) >= 16  # and the ids go past the training length
    assert all(bool((ids.diff(dim=-1) > 0).all()) for ids in seen)
    stored = saved(run)
    assert stored["config"]["position_augmentation"] == method and f"+{method}@64" in stored["variant"]


@pytest.mark.parametrize("pooling", ["embeddings", "logits"])
def test_randomized_positions_reach_chunked_evaluation_too(assets, tmp_path, monkeypatch, pooling):
    import hf_posenc.recipes.chunked as chunked

    given = []
    original = chunked.model_inputs
    monkeypatch.setattr(
        chunked, "model_inputs", lambda batch: given.append(batch.get("position_ids")) or original(batch)
    )
    run = tiny_run(
        assets,
        tmp_path,
        position_augmentation="randomized",
        eval_mode="chunked",
        chunk_window=16,
        chunk_pooling=pooling,
    )
    run_classification(run)
    assert given and all(ids is not None and ids.shape[-1] <= 16 and int(ids.max()) < 64 for ids in given)
    assert any(int(ids.max()) >= 16 for ids in given)  # spread over the target, not 0..15


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"position_augmentation": "shuffle"}, "position_augmentation must be one of"),
        ({"position_augmentation": "pose", "augmentation_target": 8}, "below the training length"),
        ({"position_augmentation": "randomized", "augmentation_target": 32}, "below an evaluation length \\(64\\)"),
        ({"position_augmentation": "pose", "augmentation_target": 32}, None),
        ({"augmentation_target": 64}, "position_augmentation is 'none'"),
        ({"position_augmentation": "pose", "encoding": "learned", "eval_lengths": [16]}, None),
        (
            {"position_augmentation": "pose", "encoding": "learned", "eval_lengths": [16], "augmentation_target": 100},
            "--max_length 100",
        ),
        ({"train_windows": "middle"}, "train_windows must be one of"),
        ({"windows_per_document": 2}, "needs --train_windows random"),
        ({"train_only": "attention"}, "train_only must be one of"),
        ({"lora_r": -1}, "lora_r must be >= 0"),
        ({"train_only": "positions", "encoding": "alibi"}, "has none"),
        ({"train_only": "positions", "encoding": "rope"}, "has none"),
    ],
)
def test_bad_method_settings_are_refused_before_training(assets, tmp_path, monkeypatch, overrides, message):
    import hf_posenc.recipes.classification as classification

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(classification, "fit", no_training)
    if message is None:  # valid: the learned table covers the target, so training starts
        with pytest.raises(AssertionError, match="training started"):
            run_classification(tiny_run(assets, tmp_path, **overrides))
        return
    with pytest.raises(ValueError, match=message):
        run_classification(tiny_run(assets, tmp_path, **overrides))


# ---------------------------------------------------------------------------------------------------------------------
# Random training windows
# ---------------------------------------------------------------------------------------------------------------------


def test_random_windows_are_seeded_per_epoch_and_cover_the_document():
    from hf_posenc.recipes.methods import RandomWindows

    documents = [{"ids": list(range(100)), "label": 1}, {"ids": [7, 8], "label": 0}]
    windows = RandomWindows(documents, room=10, windows=3, seed=5)
    assert len(windows) == 6
    first = [windows[i]["ids"] for i in range(6)]
    assert all(len(w) == 10 and w == list(range(w[0], w[0] + 10)) for w in first[:3])
    assert first[3:] == [[7, 8]] * 3  # a short document is kept whole
    assert [RandomWindows(documents, 10, 3, seed=5)[i]["ids"] for i in range(6)] == first  # repeatable
    starts = set()
    for epoch in range(30):
        windows.set_epoch(epoch)
        starts |= {windows[i]["ids"][0] for i in range(3)}
    assert len(starts) > 30 and min(starts) < 20 and max(starts) > 70  # windows from all over the document


def test_random_windows_train_on_the_whole_document_and_record_the_option(assets, tmp_path, monkeypatch):
    seen = []
    original = MeanPoolingClassifier.forward

    def spy(self, input_ids, attention_mask, labels=None, **inputs):
        if self.training:
            seen.append(input_ids.clone())
        return original(self, input_ids, attention_mask, labels, **inputs)

    monkeypatch.setattr(MeanPoolingClassifier, "forward", spy)
    run = tiny_run(assets, tmp_path, train_windows="random", windows_per_document=2, max_steps=None, epochs=2)
    results = run_classification(run)
    stored = saved(run)
    assert stored["config"]["train_windows"] == "random" and stored["config"]["windows_per_document"] == 2
    documents = stored["data"]["train_examples"]
    assert results["train"]["completed_steps"] == 2 * -(-2 * documents // run.batch_size)  # epochs twice as long
    assert max(ids.shape[1] for ids in seen) <= 16  # never more than train_length tokens at once
    # a first-window run reads only each document's opening; random windows read other parts of the documents
    openings = document_openings(run, room=14)
    rows = [row[1 : int((row != 0).sum()) - 1].tolist() for ids in seen for row in ids]
    assert sum(tuple(r) not in openings for r in rows) > len(rows) // 2
    seen.clear()
    run_classification(tiny_run(assets, tmp_path, output_dir=str(tmp_path / "first"), max_steps=2))
    assert all(tuple(row[1 : int((row != 0).sum()) - 1].tolist()) in openings for ids in seen for row in ids)
    again = tiny_run(assets, tmp_path, train_windows="random", windows_per_document=2, max_steps=None, epochs=2)
    again.output_dir = str(tmp_path / "again")
    assert _scores(run_classification(again)) == _scores(results)  # seeded: the same windows, the same model


def _scores(results: dict) -> dict:
    return {n: (m["accuracy"], m["macro_f1"]) for n, m in results["metrics"].items()}


def document_openings(run: RunConfig, room: int) -> set[tuple[int, ...]]:
    from transformers import AutoTokenizer

    from hf_posenc.recipes.classification import classification_splits

    train, _ = classification_splits(run)
    tokenizer = AutoTokenizer.from_pretrained(run.model)
    return {tuple(ids[:room]) for ids in tokenizer(list(train["text"]), add_special_tokens=False)["input_ids"]}


# ---------------------------------------------------------------------------------------------------------------------
# What trains: position parameters and the head, LoRA
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("encoding", "keep_absolute"), [("t5", False), ("relative_key", True), ("learned", False)])
def test_train_only_positions_trains_the_position_parameters_and_the_head(assets, tmp_path, encoding, keep_absolute):
    from hf_posenc.recipes.methods import position_parameter_names

    run = tiny_run(assets, tmp_path, encoding=encoding, keep_absolute=keep_absolute, train_only="positions")
    run.eval_lengths = [16, 32] if encoding == "learned" else run.eval_lengths
    results = run_classification(run, keep_model=True)
    model = results["model"]
    names = position_parameter_names(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(names) | {"classifier.weight", "classifier.bias"}
    if encoding == "t5":
        assert names == ["encoder.encoder.posenc.relative_attention_bias.weight"]
    if keep_absolute or encoding == "learned":
        assert "encoder.embeddings.position_embeddings.weight" in names
    assert results["train"]["trainable_parameters"] == sum(
        p.numel() for n, p in model.named_parameters() if n in trainable
    )
    assert results["train"]["trainable_parameters"] < results["train"]["total_parameters"] / 5
    assert saved(run)["config"]["train_only"] == "positions"


@pytest.mark.parametrize("init", ["copy", "interpolate"])
def test_keep_absolute_with_max_length_grows_the_kept_table_by_absolute_init(assets, tmp_path, init):
    from transformers import AutoModel

    from hf_posenc.recipes.training import apply_encoding
    from hf_posenc.record import stack_record

    loaded = AutoModel.from_pretrained(assets["bert"])
    rows = loaded.config.max_position_embeddings
    trained = loaded.embeddings.position_embeddings.weight.detach().clone()
    run = tiny_run(assets, tmp_path, encoding="t5", keep_absolute=True, max_length=2 * rows, absolute_init=init)
    model = apply_encoding(loaded, run)
    table = model.embeddings.position_embeddings.weight.detach()
    assert table.shape[0] == model.config.max_position_embeddings == 2 * rows
    record = stack_record(model.config, "encoder")
    assert (record.encoding, record.keep_absolute) == ("t5", True)
    if init == "copy":  # the trained rows, then the trained rows again
        torch.testing.assert_close(table, torch.cat([trained, trained]), atol=0, rtol=0)
    else:  # stretched: the first row stays, the table's ends match the trained ones
        torch.testing.assert_close(table[0], trained[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(table[-1], trained[-1], atol=1e-6, rtol=0)
        assert not torch.equal(table[rows:], trained)


def test_an_unknown_absolute_init_is_refused_with_the_choices(assets, tmp_path):
    with pytest.raises(ValueError, match="absolute_init must be one of.*copy.*interpolate"):
        tiny_run(assets, tmp_path, encoding="t5", keep_absolute=True, max_length=128, absolute_init="cpy").validate()


def test_train_only_positions_leaves_every_other_weight_as_loaded(assets, tmp_path):
    from transformers import AutoModel

    run = tiny_run(assets, tmp_path, encoding="t5", train_only="positions", learning_rate=1e-2)
    model = run_classification(run, keep_model=True)["model"]
    loaded = dict(AutoModel.from_pretrained(assets["bert"]).named_parameters())
    for name, parameter in model.encoder.named_parameters():
        if "posenc" not in name:
            torch.testing.assert_close(parameter.detach(), loaded[name].detach(), atol=0, rtol=0)


def test_lora_trains_adapters_head_and_new_position_parameters_only(assets, tmp_path):
    pytest.importorskip("peft")
    run = tiny_run(assets, tmp_path, encoding="relative_key", lora_r=4)
    results = run_classification(run, keep_model=True)
    model = results["model"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert len(lora) == 2 * 2 * 2  # A and B, query and value, two layers
    assert trainable - lora == {
        "classifier.weight",
        "classifier.bias",
        *(f"encoder.encoder.layer.{i}.attention.self.posenc.distance_embedding.weight" for i in range(2)),
    }
    # B starts at zero: training moved it
    assert any(float(p.detach().abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    assert saved(run)["config"]["lora_r"] == 4 and "+lora4" in saved(run)["variant"]


def test_lora_without_peft_names_the_extra(assets, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("No module named 'peft'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(ImportError, match=r"pip install hf-posenc\[peft\]"):
        run_classification(tiny_run(assets, tmp_path, lora_r=4))


# ---------------------------------------------------------------------------------------------------------------------
# Cached masked-LM adaptation
# ---------------------------------------------------------------------------------------------------------------------


def mlm_run(assets, tmp_path, **overrides) -> RunConfig:
    values = dict(
        mlm_steps=3,
        mlm_dataset=str(assets["running"]),
        mlm_length=16,
        mlm_batch_size=4,
        mlm_eval_lengths=[32],
        mlm_max_eval_chunks=4,
        position_augmentation="pose",
        mlm_seed=0,
    )
    return tiny_run(assets, tmp_path, **{**values, **overrides})


def test_mlm_adaptation_with_augmentation_is_cached_and_reused_across_seeds(assets, tmp_path, capsys):
    first = mlm_run(assets, tmp_path, encoding="t5", output_dir=str(tmp_path / "a"))
    results = run_classification(first)
    cache = results["mlm"]["cache"]
    assert cache["reused"] is False and "reusing adapted checkpoint" not in capsys.readouterr().out
    entry = Path(cache["folder"])
    assert {p.name for p in entry.iterdir()} == {
        "encoder.safetensors",
        "mlm_results.json",
        "settings.json",
        "code.json",
        "manifest.json",
    }
    assert json.loads((entry / "settings.json").read_text())["position_augmentation"] == "pose"
    second = mlm_run(assets, tmp_path, encoding="t5", seed=1, output_dir=str(tmp_path / "b"))
    reused = run_classification(second)
    out = capsys.readouterr().out
    assert f"reusing adapted checkpoint {cache['hash']}" in out and "warning" not in out
    assert reused["mlm"]["cache"] == {**cache, "reused": True} and cache["code"]["same"]
    assert reused["mlm"]["after"] == results["mlm"]["after"]
    # another setting that affects the adaptation is another entry
    other = run_classification(mlm_run(assets, tmp_path, encoding="t5", mlm_steps=2, output_dir=str(tmp_path / "c")))
    assert other["mlm"]["cache"]["hash"] != cache["hash"] and other["mlm"]["cache"]["reused"] is False


def test_an_entry_made_by_other_code_is_reused_with_a_warning(tmp_path, monkeypatch):
    from hf_posenc.recipes import adaptation

    monkeypatch.setenv("HF_POSENC_CACHE", str(tmp_path / "cache"))
    state = {"weight": torch.arange(4.0)}
    computed, messages = [], []

    def compute():
        computed.append(1)
        return state, {"after": {"32": {"mlm_loss": 1.0}}}

    key = {"encoding": "t5", "seed": 0}
    monkeypatch.setattr(adaptation, "code_digest", lambda: "a" * 64)
    adaptation.cached_adaptation(key, compute, messages.append)
    found, results = adaptation.cached_adaptation(key, compute, messages.append)
    assert len(computed) == 1 and torch.equal(found["weight"], state["weight"]) and results["cache"]["code"]["same"]
    assert not any("warning" in m for m in messages)
    monkeypatch.setattr(adaptation, "code_digest", lambda: "b" * 64)  # the adaptation code changed since
    found, results = adaptation.cached_adaptation(key, compute, messages.append)
    assert len(computed) == 1 and results["cache"]["code"] == {"entry": "a" * 64, "current": "b" * 64, "same": False}
    assert "was made by code aaaaaaaaaaaa, not the current adaptation code (bbbbbbbbbbbb)" in messages[-1]
    (Path(results["cache"]["folder"]) / "code.json").unlink()  # an entry from before entries recorded their code
    manifest = Path(results["cache"]["folder"]) / "manifest.json"
    files = json.loads(manifest.read_text())["files"]
    manifest.write_text(json.dumps({"files": {k: v for k, v in files.items() if k != "code.json"}}))
    _, results = adaptation.cached_adaptation(key, compute, messages.append)
    assert len(computed) == 1 and results["cache"]["code"]["entry"] is None
    assert "made by a version that did not record its code" in messages[-1]


def test_code_digest_follows_the_adaptation_sources():
    from hf_posenc.recipes import adaptation

    first = adaptation.code_digest()
    assert len(first) == 64 and adaptation.code_digest() == first  # read once per process
    sources = {p for pattern in adaptation.ADAPTATION_SOURCES for p in adaptation.PACKAGE_ROOT.glob(pattern)}
    names = {p.relative_to(adaptation.PACKAGE_ROOT).as_posix() for p in sources}
    assert {"patching.py", "encodings/relative.py", "recipes/mlm.py", "recipes/training.py"} <= names
    assert "recipes/stats.py" not in names  # reporting code does not make an adaptation stale


def test_an_incomplete_cache_entry_is_recomputed(assets, tmp_path, capsys):
    run = mlm_run(assets, tmp_path, encoding="t5", mlm_steps=1, output_dir=str(tmp_path / "a"))
    entry = Path(run_classification(run)["mlm"]["cache"]["folder"])
    (entry / "encoder.safetensors").write_bytes(b"truncated")
    again = run_classification(mlm_run(assets, tmp_path, encoding="t5", mlm_steps=1, output_dir=str(tmp_path / "b")))
    assert again["mlm"]["cache"]["reused"] is False and "reusing" not in capsys.readouterr().out
    assert again["mlm"]["cache"]["folder"] == str(entry) and (entry / "encoder.safetensors").stat().st_size > 100


def test_cached_adaptation_equals_a_fresh_one(assets, tmp_path):
    run = mlm_run(assets, tmp_path, encoding="t5", mlm_steps=2, mlm_cache=False, output_dir=str(tmp_path / "a"))
    fresh = run_classification(run, keep_model=True)
    cached = mlm_run(assets, tmp_path, encoding="t5", mlm_steps=2, output_dir=str(tmp_path / "b"))
    run_classification(cached)  # computes and stores
    reused = run_classification(
        mlm_run(assets, tmp_path, encoding="t5", mlm_steps=2, output_dir=str(tmp_path / "c")), keep_model=True
    )
    assert reused["mlm"]["cache"]["reused"] is True
    for (name, a), (_, b) in zip(fresh["model"].named_parameters(), reused["model"].named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


# ---------------------------------------------------------------------------------------------------------------------
# adapt: one call and `hf-posenc adapt`
# ---------------------------------------------------------------------------------------------------------------------


def _texts(assets) -> list[str]:
    return [t for t in assets["running"].read_text().split("\n\n") if t.strip()]


def test_adapt_trains_the_positions_and_writes_a_checkpoint_that_loads_like_any_other(assets, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    import hf_posenc

    tokenizer = AutoTokenizer.from_pretrained(assets["bert"])
    model = hf_posenc.patch_model(AutoModel.from_pretrained(assets["bert"]), "t5", replace=True)
    before = model.encoder.posenc.relative_attention_bias.weight.detach().clone()
    out = tmp_path / "adapted"
    returned = hf_posenc.adapt(
        model, tokenizer, _texts(assets), target_length=256, steps=3, train_length=16, batch_size=4, output_dir=out
    )
    assert returned is model and not model.training
    after = model.encoder.posenc.relative_attention_bias.weight.detach()
    assert not torch.equal(before, after)
    for loaded in (hf_posenc.from_pretrained(out), AutoModel.from_pretrained(out)):
        assert type(loaded).__name__ == "BertModel"
        for (name, a), (_, b) in zip(model.named_parameters(), loaded.named_parameters()):
            torch.testing.assert_close(a.detach(), b.detach(), atol=0, rtol=0, msg=name)
    ids = torch.tensor([[2, *range(5, 65), 3] * 3])  # 186 tokens: past the 64-row table the checkpoint had
    torch.testing.assert_close(
        model(input_ids=ids).last_hidden_state, loaded(input_ids=ids).last_hidden_state, atol=1e-5, rtol=0
    )
    assert not any(p.name.startswith(".adapted") for p in tmp_path.iterdir())  # no staging folder left behind


def test_adapt_is_repeatable_given_the_seed(assets):
    from transformers import AutoModel, AutoTokenizer

    import hf_posenc

    tokenizer = AutoTokenizer.from_pretrained(assets["bert"])
    tables = []
    for _ in range(2):
        torch.manual_seed(0)  # the patch initializes the new table from the global generator
        model = hf_posenc.patch_model(AutoModel.from_pretrained(assets["bert"]), "t5", replace=True)
        torch.manual_seed(99)  # adapt seeds itself: what the global generator holds does not matter
        hf_posenc.adapt(model, tokenizer, _texts(assets), target_length=128, steps=2, train_length=16, seed=4)
        tables.append(model.encoder.posenc.relative_attention_bias.weight.detach())
    torch.testing.assert_close(tables[0], tables[1], atol=0, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"augmentation": "shuffle"}, "augmentation must be one of"),
        ({"target_length": 8}, "at least train_length"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"encoding": "learned"}, r"extend_positions\(model, 256\)"),
        ({"texts": ["w1 w2"]}, "no chunk of 16 tokens"),
        ({"head_warmup_steps": -1}, "head_warmup_steps must be an int >= 0"),
        ({"head_learning_rate": 0.0}, "head_learning_rate must be positive"),
    ],
)
def test_adapt_refuses_bad_input_before_training(assets, kwargs, message):
    from transformers import AutoModel, AutoTokenizer

    import hf_posenc

    tokenizer = AutoTokenizer.from_pretrained(assets["bert"])
    model = hf_posenc.patch_model(
        AutoModel.from_pretrained(assets["bert"]), kwargs.pop("encoding", "t5"), replace=True
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    arguments = {"target_length": 256, "steps": 2, "train_length": 16, "texts": _texts(assets), **kwargs}
    texts = arguments.pop("texts")
    with pytest.raises(ValueError, match=message):
        hf_posenc.adapt(model, tokenizer, texts, **arguments)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # nothing trained


def test_cli_adapt_writes_a_loadable_checkpoint(assets, tmp_path, capsys):
    from hf_posenc import cli, from_pretrained, patch_spec

    out = tmp_path / "cli-adapted"
    argv = ["adapt", str(assets["bert"]), str(out), "--target_length", "128", "--steps", "2"]
    argv += ["--train_length", "16", "--batch_size", "4", "--texts", str(assets["running"]), "--encoding", "alibi"]
    assert cli.main(argv) == 0
    assert "adapted" in capsys.readouterr().out
    model = from_pretrained(out)
    assert patch_spec(model)["stacks"]["encoder"]["encoding"] == "alibi"
    ids = torch.tensor([[2, *range(5, 75), 3] * 1])
    assert model(input_ids=ids).last_hidden_state.shape == (1, 72, 32)
    assert cli.main(argv) != 0  # a second run refuses the non-empty folder
    assert "not an empty folder" in capsys.readouterr().err


def test_cli_adapt_with_a_learned_table_names_max_length(assets, tmp_path, capsys):
    from hf_posenc import cli

    argv = ["adapt", str(assets["bert"]), str(tmp_path / "x"), "--target_length", "128", "--steps", "1"]
    argv += ["--train_length", "16", "--texts", str(assets["running"])]
    assert cli.main(argv) != 0
    assert "--max_length 128" in capsys.readouterr().err
    argv += ["--max_length", "128"]
    assert cli.main(argv) == 0 and (tmp_path / "x" / "config.json").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# Augmentation in the masked-LM and seq2seq recipes
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["pose", "randomized"])
def test_mlm_recipe_alone_takes_position_augmentation(assets, tmp_path, monkeypatch, method):
    from hf_posenc.recipes.mlm import MaskedPositionsMLM, run_mlm_adaptation

    seen, evaluated = [], []
    original = MaskedPositionsMLM.forward

    def spy(self, input_ids, labels, attention_mask=None, position_ids=None):
        (seen if self.training else evaluated).append(position_ids)
        return original(self, input_ids, labels, attention_mask, position_ids)

    monkeypatch.setattr(MaskedPositionsMLM, "forward", spy)
    run = mlm_run(assets, tmp_path, encoding="rope", position_augmentation=method, augmentation_target=200)
    record = run_mlm_adaptation(run)
    assert len(seen) == 3 and all(ids is not None and int(ids.max()) < 200 for ids in seen)
    assert max(int(ids.max()) for ids in seen) > 64  # past the checkpoint's 64 positions
    assert record["config"]["augmentation_target"] == 200 and record["mlm"]["after"]["32"]["mlm_loss"] > 0
    # The evaluations before and after (one batch each): randomized positions are drawn at test time too, the same
    # ids both times (seeded per batch, so before and after compare one thing); PoSE evaluates with plain positions.
    assert len(evaluated) == 2 and all((ids is not None) == (method == "randomized") for ids in evaluated)
    if method == "randomized":
        assert all(int(ids.max()) < 200 for ids in evaluated) and max(int(ids.max()) for ids in evaluated) >= 32
        assert torch.equal(evaluated[0], evaluated[1])


def test_test_time_positions_key_the_mlm_cache_apart(assets, tmp_path, monkeypatch):
    # A cached adaptation records its MLM evaluation; one evaluated with plain positions must not be reused for a
    # randomized run (drawn at test time), and the keys of every other method stay as they were.
    from types import SimpleNamespace

    from hf_posenc.recipes import mlm

    keys = {}
    for method in ("pose", "randomized"):
        monkeypatch.setattr(mlm, "cached_adaptation", lambda key, compute, log, m=method: keys.update({m: key}))
        run = mlm_run(assets, tmp_path, encoding="rope", position_augmentation=method, augmentation_target=200)
        mlm.adapt_mlm(run, None, SimpleNamespace(print=print))
    assert keys["pose"]["mlm_evaluation"] == [[32], 4]
    assert keys["randomized"]["mlm_evaluation"] == [[32], 4, "test-time randomized positions"]


def seq2seq_run(assets, tmp_path, **overrides):
    from hf_posenc.recipes.settings import Seq2SeqConfig

    values = dict(
        tokenizer=str(assets["bert"]),
        warm_start=False,
        text_dataset=str(assets["running"]),
        d_model=32,
        heads=4,
        ffn_dim=64,
        train_length=8,
        eval_lengths=[8, 32],
        train_examples=16,
        eval_examples=4,
        batch_size=8,
        generate=False,
        encoding="t5",
        output_dir=str(tmp_path / "s2s"),
        progress=False,
    )
    return Seq2SeqConfig.from_dict({**values, **overrides})


@pytest.mark.parametrize("method", ["pose", "randomized"])
def test_seq2seq_recipe_augments_the_encoder_positions(assets, tmp_path, monkeypatch, method):
    from transformers.models.bart import modeling_bart

    from hf_posenc.recipes.seq2seq import run_seq2seq

    seen, evaluated = [], []
    original = modeling_bart.BartEncoder.forward

    def spy(self, *args, **kwargs):
        (seen if self.training else evaluated).append(kwargs.get("position_ids"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(modeling_bart.BartEncoder, "forward", spy)
    run = seq2seq_run(assets, tmp_path, position_augmentation=method, generate=True)
    results = run_seq2seq(run)
    # The target defaults to the longest encoder input: 32 source tokens between [CLS] and [SEP]. The recorded
    # settings keep it unset, so the finished run is the requested one (a sweep's --resume reuses it).
    assert seen and all(ids is not None and int(ids.max()) < 34 for ids in seen)
    assert max(int(ids.max()) for ids in seen) >= 10
    assert results["encoder_augmentation_target"] == 34 and results["config"]["augmentation_target"] is None
    assert settings_differences(results["config"], run.to_dict()) == [] and f"+{method}@32" in results["variant"]
    assert set(results["metrics"]) == {"8", "32"} and all("exact_match" in m for m in results["metrics"].values())
    # One encoder pass for the loss and one for generation per batch (4 examples, one batch per length). Randomized
    # positions are drawn at test time too, the same for both passes; PoSE evaluates with plain positions.
    assert len(evaluated) == 4 and all((ids is not None) == (method == "randomized") for ids in evaluated)
    if method == "randomized":
        assert torch.equal(evaluated[0], evaluated[1]) and torch.equal(evaluated[2], evaluated[3])
        assert int(evaluated[0].max()) >= 10 and all(int(ids.max()) < 34 for ids in evaluated)


@pytest.mark.parametrize(("method", "refused"), [("randomized", True), ("pose", False)])
def test_seq2seq_randomized_target_below_the_longest_input_is_refused_before_training(
    assets, tmp_path, method, refused
):
    from hf_posenc.recipes.seq2seq import run_seq2seq

    run = seq2seq_run(assets, tmp_path, position_augmentation=method, augmentation_target=33, max_steps=1)
    if not refused:  # PoSE evaluates with plain positions: a target under the input only limits training's ids
        assert run_seq2seq(run)["config"]["augmentation_target"] == 33
        return
    with pytest.raises(ValueError, match=r"below the longest encoder input \(34: 32 tokens and 2 special tokens\)"):
        run_seq2seq(run)
    assert not Path(run.output_dir).exists()


@pytest.mark.parametrize("model_type", ["bart", "mbart"])
def test_encoder_positions_generate_with_plain_ids_is_plain_generate(model_type):
    from tiny_models import tiny_model

    from hf_posenc import patch_model
    from hf_posenc.recipes.methods import EncoderPositions

    model = patch_model(tiny_model(model_type, HEAD_OF[model_type]), "t5")
    with torch.no_grad():  # a fresh T5 bias is near zero: make positions matter
        for name, parameter in model.named_parameters():
            if "posenc" in name:
                parameter.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": torch.randint(3, 99, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    options = {"max_new_tokens": 6, "num_beams": 1, "do_sample": False}
    wrapped = EncoderPositions(model)
    plain = model.generate(**inputs, **options)
    assert torch.equal(wrapped.generate(**inputs, **options), plain)
    assert torch.equal(wrapped.generate(**inputs, position_ids=torch.arange(12).expand(2, 12), **options), plain)
    # Other encoder positions: the outputs are the model's own with those ids, and not its outputs without them.
    spread = torch.arange(0, 60, 5).expand(2, 12)
    labels = torch.randint(3, 99, (2, 5))
    with torch.no_grad():
        found = wrapped(**inputs, labels=labels, position_ids=spread)
        expected = model(**inputs, labels=labels, position_ids=spread)
        assert torch.equal(found.logits, expected.logits) and torch.equal(found.loss, expected.loss)
        plain = model(**inputs, labels=labels)
        assert not torch.allclose(found.encoder_last_hidden_state, plain.encoder_last_hidden_state, atol=1e-3)
        assert not torch.equal(found.logits, plain.logits)  # a random decoder barely reads its encoder


HEAD_OF = {"bart": "BartForConditionalGeneration", "mbart": "MBartForConditionalGeneration"}


def test_seq2seq_augmentation_trains_a_learned_encoder_table_past_the_window(assets, tmp_path):
    from tiny_models import tiny_model

    from hf_posenc import patch_model
    from hf_posenc.augmentation import sample_position_ids
    from hf_posenc.recipes.methods import EncoderPositions
    from hf_posenc.recipes.seq2seq import run_seq2seq

    # The encoder run alone takes the ids, so PoSE reaches BART's learned table: rows past the window get gradients.
    model = patch_model(tiny_model("bart", HEAD_OF["bart"]), "learned").train()
    ids = torch.randint(3, 99, (2, 8))
    positions = sample_position_ids(2, 8, target_length=48, generator=torch.Generator().manual_seed(0))
    EncoderPositions(model)(ids, torch.ones_like(ids), labels=ids, position_ids=positions).loss.backward()
    grad = model.model.encoder.embed_positions.weight.grad.abs().sum(-1)
    used = sorted(set((positions + 2).flatten().tolist()))  # BART's table keeps two rows before position 0
    assert (grad[used] > 0).all() and max(used) >= 10 and float(grad[50:].sum()) == 0.0
    # The recipe runs it (once refused as having no effect), and a target past the table is refused before training.
    results = run_seq2seq(seq2seq_run(assets, tmp_path / "ok", encoding="learned", position_augmentation="pose"))
    assert results["encoder_augmentation_target"] == 34 and set(results["metrics"]) == {"8", "32"}
    too_far = seq2seq_run(assets, tmp_path / "far", encoding="learned", position_augmentation="pose")
    too_far.augmentation_target = 200
    with pytest.raises(ValueError, match="past the encoder's 66 positions"):
        run_seq2seq(too_far)
    assert not (tmp_path / "far" / "s2s").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Each method end to end on the real all-MiniLM-L6-v2 (slow: the real checkpoint and the Pang & Lee reviews)
# ---------------------------------------------------------------------------------------------------------------------

REAL_METHODS = {
    "chunked": {"eval_mode": "both", "chunk_pooling": "embeddings"},
    "pose": {"encoding": "t5", "position_augmentation": "pose"},
    "randomized": {"encoding": "alibi", "position_augmentation": "randomized", "augmentation_target": 1024},
    "windows": {"train_windows": "random", "windows_per_document": 2},
    "positions": {"encoding": "t5", "train_only": "positions"},
    "lora": {"lora_r": 4},
    "mlm": {"encoding": "t5", "position_augmentation": "pose", "mlm_steps": 2, "mlm_length": 128, "mlm_seed": 0},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(REAL_METHODS))
def test_each_method_runs_on_the_real_checkpoint(assets, tmp_path, method):
    from hf_posenc.hub.assets import minilm_checkpoint

    values = dict(
        model=str(minilm_checkpoint()),
        dataset="pang_lee",
        encoding="learned",
        pooling="mean",
        train_length=128,
        eval_lengths=[128, 1024] if method in ("chunked", "randomized") else [128, 512],
        max_steps=2,
        batch_size=4,
        head_learning_rate=1e-3,
        max_train_examples=16,
        max_eval_examples=8,
        mlm_dataset=str(assets["running"]),
        mlm_batch_size=4,
        output_dir=str(tmp_path / method),
        progress=False,
    )
    if method in ("chunked", "randomized"):
        values["encoding"] = "alibi"  # 1024 tokens: past the learned table
    run = RunConfig.from_dict({**values, **REAL_METHODS[method]})
    results = run_classification(run)
    stored = saved(run)
    for key, value in REAL_METHODS[method].items():
        assert stored["config"][key] == value
    assert stored["predictions"]["labels"] and len(stored["predictions"]["single"]) == 2
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in results["metrics"].values())
    if method == "chunked":
        assert stored["predictions"]["chunked"]["128"] == stored["predictions"]["single"]["128"]
    if method in ("positions", "lora"):
        assert results["train"]["trainable_parameters"] < results["train"]["total_parameters"] / 10


@pytest.mark.slow
def test_adapt_the_real_checkpoint_to_2048_tokens(assets, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    import hf_posenc
    from hf_posenc.hub.assets import minilm_checkpoint

    checkpoint = minilm_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = hf_posenc.patch_model(AutoModel.from_pretrained(checkpoint), "t5", replace=True)
    out = tmp_path / "minilm-t5-2048"
    hf_posenc.adapt(model, tokenizer, _texts(assets), target_length=2048, steps=2, batch_size=4, output_dir=out)
    loaded = AutoModel.from_pretrained(out)
    ids = tokenizer(" ".join(["a long review"] * 700), return_tensors="pt", truncation=False)["input_ids"][:, :2048]
    assert ids.shape[1] == 2048
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state, atol=1e-4, rtol=0
        )


# ---------------------------------------------------------------------------------------------------------------------
# MLM head warm-up
# ---------------------------------------------------------------------------------------------------------------------


def test_head_warm_up_trains_only_the_new_heads_own_parameters(assets, tmp_path):
    from transformers import AutoTokenizer

    from hf_posenc.recipes.mlm import (
        MaskedPositionsMLM,
        build_mlm_model,
        head_parameters,
        mlm_dataloaders,
        warm_up_head,
    )

    run = mlm_run(assets, tmp_path, encoding="t5", position_augmentation="none")
    model = MaskedPositionsMLM(build_mlm_model(run))  # the tiny BERT has no MLM head: a new one, decoder tied
    loader, _ = mlm_dataloaders(run, AutoTokenizer.from_pretrained(assets["bert"]))
    own = {id(p) for p in head_parameters(model)}
    names = {n for n, p in model.named_parameters() if id(p) in own}
    assert any("transform.dense" in n for n in names) and not any("word_embeddings" in n for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    record = warm_up_head(model, loader, 4, 1e-2)
    assert record["steps"] == 4 and len(record["losses"]) == 4
    for name, parameter in model.named_parameters():  # the encoder, its T5 table and the tied embeddings untouched
        assert (not torch.equal(parameter, before[name])) == (id(parameter) in own), name
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_head_warm_up_is_recorded_and_keyed_only_when_it_runs(assets, tmp_path):
    from hf_posenc.recipes.adaptation import HEAD_WARMUP_FIELDS, adaptation_key

    plain_run = mlm_run(assets, tmp_path, encoding="t5", output_dir=str(tmp_path / "a"))
    plain = run_classification(plain_run)
    warmed_run = mlm_run(assets, tmp_path, encoding="t5", mlm_head_warmup_steps=3, output_dir=str(tmp_path / "b"))
    warmed = run_classification(warmed_run)
    assert "head_warmup" not in plain["mlm"] and len(warmed["mlm"]["head_warmup"]["losses"]) == 3
    assert set(warmed["mlm"]["head_warmup"]["after"]) == {"32"}  # MLM loss after the warm-up, per length
    assert warmed["mlm"]["cache"]["hash"] != plain["mlm"]["cache"]["hash"]
    assert "+head3" in warmed_run.variant and "+head" not in plain_run.variant
    # Without the warm-up the key is the one written before the warm-up existed: cached entries keep their names.
    key = adaptation_key(plain_run, str(assets["bert"]), 0, None)
    assert not set(HEAD_WARMUP_FIELDS) & set(key)
    assert set(HEAD_WARMUP_FIELDS) <= set(adaptation_key(warmed_run, str(assets["bert"]), 0, None))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mlm_head_warmup_steps": -1}, "mlm_head_warmup_steps must be at least 0"),
        ({"mlm_head_learning_rate": 0.0}, "mlm_head_learning_rate must be positive"),
    ],
)
def test_bad_head_warm_up_settings_are_refused(assets, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        mlm_run(assets, tmp_path, **change)


def test_adapt_with_a_head_warm_up_changes_the_result_and_stays_repeatable(assets):
    from transformers import AutoModel, AutoTokenizer

    import hf_posenc

    tokenizer = AutoTokenizer.from_pretrained(assets["bert"])

    def adapted(**kwargs):
        torch.manual_seed(0)  # the patch initializes the new table from the global generator
        model = hf_posenc.patch_model(AutoModel.from_pretrained(assets["bert"]), "t5", replace=True)
        arguments = dict(target_length=256, steps=2, train_length=16, seed=3, **kwargs)
        return hf_posenc.adapt(model, tokenizer, _texts(assets), **arguments).state_dict()

    plain, warmed, again = adapted(), adapted(head_warmup_steps=3), adapted(head_warmup_steps=3)
    assert all(torch.equal(warmed[k], again[k]) for k in warmed)
    assert any(not torch.equal(warmed[k], plain[k]) for k in warmed)
