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
from recipe_fixtures import make_reviews_csv, make_running_text, make_tiny_bert

from hf_posenc.recipes.chunked import ChunkingCollator, chunk_starts, chunked_document_logits
from hf_posenc.recipes.classification import MeanPoolingClassifier, run_classification
from hf_posenc.recipes.settings import RunConfig


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("methods")
    return {
        "bert": make_tiny_bert(root / "bert"),
        "reviews": make_reviews_csv(root / "reviews.csv"),
        "running": make_running_text(root / "running.txt"),
        "root": root,
    }


def tiny_run(assets, tmp_path: Path, **overrides) -> RunConfig:
    values = dict(
        model=str(assets["bert"]),
        dataset=str(assets["reviews"]),
        encoding="alibi",
        pooling="mean",
        train_length=16,
        eval_lengths=[16, 64],
        max_steps=4,
        batch_size=8,
        learning_rate=1e-3,
        output_dir=str(tmp_path / "run"),
        progress=False,
    )
    return RunConfig.from_dict({**values, **overrides})


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
