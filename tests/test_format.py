"""Checkpoints saved by hf_posenc 0.1.0 (tests/fixtures/format_v0_1_0, made by its make_fixture.py) still load and
reproduce their outputs, and saving them again writes the same config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForSequenceClassification

import hf_posenc

FIXTURES = Path(__file__).parent / "fixtures" / "format_v0_1_0"
CASES = {"bert_alibi": "logits", "bart_t5_rope": "last_hidden_state", "bert_grouped": "last_hidden_state"}


def _outputs(model, expected: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    batch = {k: v for k, v in expected.items() if k != "output"}
    with torch.no_grad():
        return getattr(model(**batch), key)


@pytest.mark.parametrize("name", sorted(CASES))
def test_v0_1_0_checkpoint_reproduces_its_outputs(name):
    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    model = hf_posenc.from_pretrained(FIXTURES / name)
    torch.testing.assert_close(_outputs(model, expected, CASES[name]), expected["output"], atol=1e-6, rtol=0)


def test_v0_1_0_checkpoint_loads_through_auto_classes():
    expected = load_file(str(FIXTURES / "bert_alibi" / "expected.safetensors"))
    model = AutoModelForSequenceClassification.from_pretrained(FIXTURES / "bert_alibi")
    torch.testing.assert_close(_outputs(model, expected, "logits"), expected["output"], atol=1e-6, rtol=0)
    assert model.config.model_type == "bert"
    assert (
        AutoModel.from_pretrained(FIXTURES / "bart_t5_rope").config.posenc["stacks"]["decoder"]["encoding"] == "rope"
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_saving_a_v0_1_0_checkpoint_again_writes_the_same_config(tmp_path, name):
    hf_posenc.from_pretrained(FIXTURES / name).save_pretrained(tmp_path)
    old = json.loads((FIXTURES / name / "config.json").read_text())
    new = json.loads((tmp_path / "config.json").read_text())
    old.pop("transformers_version"), new.pop("transformers_version")
    assert new == old
    assert (tmp_path / "posenc_loader.py").read_text() == (FIXTURES / name / "posenc_loader.py").read_text()
