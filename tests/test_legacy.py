"""Legacy import: transformers 4.x BERT `relative_key` / `relative_key_query` and NEZHA checkpoints load as patched
transformers 5 models that reproduce the outputs transformers 4.57.6 gave (golden fixtures in fixtures/legacy/)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

import hf_posenc
from hf_posenc import cli

FIXTURES = Path(__file__).parent / "fixtures" / "legacy"
CASES = {
    "bert_relative_key": ("BertModel", "relative_key"),
    "bert_relative_key_query": ("BertModel", "relative_key_query"),
    "bert_relative_key_seqcls": ("BertForSequenceClassification", "relative_key_query"),
    "nezha": ("BertModel", "nezha"),
}
ATOL = 1e-5  # fp32, other kernels and op order than 4.x; a wrong distance sign moves outputs by 0.2-1.6 (README)


def expected(name: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / name / "expected.safetensors")


@torch.no_grad()
def outputs(model: torch.nn.Module, golden: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(short padded batch, long unpadded input) outputs: logits for a classifier, else the last hidden state."""
    short = model(input_ids=golden["input_ids"], attention_mask=golden["attention_mask"])
    long = model(input_ids=golden["long_input_ids"])
    if hasattr(short, "logits"):
        return short.logits, long.logits
    return short.last_hidden_state, long.last_hidden_state


def golden_outputs(golden: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if "logits" in golden:
        return golden["logits"], golden["long_logits"]
    return golden["last_hidden_state"], golden["long_last_hidden_state"]


def copy_fixture(name: str, target: Path) -> Path:
    shutil.copytree(FIXTURES / name, target)
    return target


@pytest.mark.parametrize("name", CASES)
def test_legacy_checkpoint_reproduces_transformers_4_outputs(name):
    model = hf_posenc.from_pretrained(FIXTURES / name)
    head, encoding = CASES[name]
    assert type(model).__name__ == head
    assert hf_posenc.patch_spec(model)["stacks"]["encoder"]["encoding"] == encoding
    golden = expected(name)
    for found, reference in zip(outputs(model, golden), golden_outputs(golden), strict=True):
        assert found.shape == reference.shape
        torch.testing.assert_close(found, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["bert_relative_key", "bert_relative_key_seqcls"])
def test_distance_tables_are_moved_and_the_unused_absolute_table_dropped(name):
    model = hf_posenc.from_pretrained(FIXTURES / name)
    checkpoint = load_file(FIXTURES / name / "model.safetensors")
    prefix = "bert." if name.endswith("seqcls") else ""
    state = model.state_dict()
    for layer in range(2):
        old = f"{prefix}encoder.layer.{layer}.attention.self.distance_embedding.weight"
        new = f"{prefix}encoder.layer.{layer}.attention.self.posenc.distance_embedding.weight"
        assert checkpoint[old].shape == (2 * 64 - 1, 8)  # 4.x: 2 * max_position_embeddings - 1 rows
        assert torch.equal(state[new], checkpoint[old])
    assert not any("position_embeddings" in key for key in state)
    assert hf_posenc.patch_spec(model)["stacks"]["encoder"]["options"]["max_distance"] == 63


def test_the_tolerance_separates_a_correct_import_from_a_broken_one():
    """Without the distance terms the outputs move far outside ATOL: the fixtures do test the position terms."""
    model = hf_posenc.from_pretrained(FIXTURES / "bert_relative_key_query")
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "distance_embedding"):
                module.distance_embedding.weight.zero_()
    short, _ = outputs(model, expected("bert_relative_key_query"))
    assert (short - expected("bert_relative_key_query")["last_hidden_state"]).abs().max() > 100 * ATOL


def test_imported_legacy_model_saves_and_reloads_exactly(tmp_path):
    model = hf_posenc.from_pretrained(FIXTURES / "bert_relative_key_seqcls")
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "posenc-bert"
    reloaded = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    golden = expected("bert_relative_key_seqcls")
    for found, reference in zip(outputs(reloaded, golden), outputs(model, golden), strict=True):
        assert torch.equal(found, reference)


def test_nezha_ignores_stored_sinusoid_tables(tmp_path):
    """Third-party NEZHA ports saved the fixed `relative_positions_encoding.positions_encoding` tables."""
    folder = copy_fixture("nezha", tmp_path / "nezha")
    weights = load_file(folder / "model.safetensors")
    for layer in range(2):
        weights[f"encoder.layer.{layer}.attention.self.relative_positions_encoding.positions_encoding"] = torch.ones(
            64, 64, 8
        )
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    golden = expected("nezha")
    found, _ = outputs(hf_posenc.from_pretrained(folder), golden)
    torch.testing.assert_close(found, golden["last_hidden_state"], atol=ATOL, rtol=0)


def test_nezha_task_head_maps_to_the_bert_head(tmp_path):
    """`NezhaForSequenceClassification` keys (`nezha.` prefix) load into `BertForSequenceClassification`."""
    folder = copy_fixture("nezha", tmp_path / "nezha_seqcls")
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["NezhaForSequenceClassification"], num_labels=2)
    (folder / "config.json").write_text(json.dumps(config))
    weights = {f"nezha.{k}": v for k, v in load_file(folder / "model.safetensors").items()}
    generator = torch.Generator().manual_seed(0)
    weights["classifier.weight"] = torch.randn(2, 32, generator=generator)
    weights["classifier.bias"] = torch.randn(2, generator=generator)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    model = hf_posenc.from_pretrained(folder)
    assert type(model) is tf.BertForSequenceClassification
    golden = expected("nezha")
    with torch.no_grad():
        hidden = model.bert(input_ids=golden["input_ids"], attention_mask=golden["attention_mask"]).last_hidden_state
        pooled = model.bert.pooler(hidden)
        logits = model(input_ids=golden["input_ids"], attention_mask=golden["attention_mask"]).logits
    torch.testing.assert_close(hidden, golden["last_hidden_state"], atol=ATOL, rtol=0)
    assert torch.equal(model.classifier.weight, weights["classifier.weight"])
    torch.testing.assert_close(logits, model.classifier(pooled), atol=1e-6, rtol=0)


def test_absolute_and_unpatched_bert_checkpoints_are_not_legacy(tmp_path):
    folder = copy_fixture("bert_relative_key", tmp_path / "absolute")
    config = json.loads((folder / "config.json").read_text())
    config["position_embedding_type"] = "absolute"
    (folder / "config.json").write_text(json.dumps(config))
    model = hf_posenc.from_pretrained(folder)  # an ordinary checkpoint: transformers loads it, unpatched
    assert hf_posenc.patch_spec(model) is None and type(model) is tf.BertModel


def test_inspect_describes_a_legacy_checkpoint(capsys):
    assert cli.main(["inspect", str(FIXTURES / "bert_relative_key_query")]) == 0
    printed = capsys.readouterr().out
    assert "legacy: transformers 4.x bert with position_embedding_type='relative_key_query'" in printed
    assert "relative_key_query (max_distance=63)" in printed and "2,032 learned position parameters" in printed
    assert cli.main(["inspect", str(FIXTURES / "nezha")]) == 0
    assert "nezha (max_distance=8)" in capsys.readouterr().out
