"""The math of each encoding, against formulas written out plainly and against transformers' own implementations."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.bloom.modeling_bloom import build_alibi_tensor
from transformers.models.t5.modeling_t5 import T5Attention

from hf_posenc.attention import posenc_attention_forward
from hf_posenc.encodings import (
    ALIASES,
    ENCODINGS,
    PositionContext,
    RotaryEncoding,
    StackDims,
    alibi_slopes,
    build_encoding,
    canonical_name,
    register_encoding,
    rotate,
    sinusoid_table,
    t5_relative_buckets,
)

DIMS = StackDims(hidden_size=32, num_heads=4, head_dim=8, causal=False, max_length=64)
RELATIVE = sorted(n for n, c in ENCODINGS.items() if c.kind == "relative")


def test_sinusoid_formula_interleaved():
    table = sinusoid_table(torch.arange(50), 16)
    for p in (0, 1, 7, 49):
        for i in range(8):
            angle = p / 10000 ** (2 * i / 16)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("heads", [1, 4, 5, 6, 8, 12, 16, 20])
def test_alibi_slopes_match_bloom(heads):
    mask = torch.ones(1, 3)
    bloom = build_alibi_tensor(mask, heads, torch.float32)  # (heads, 1, 3): slope * position
    torch.testing.assert_close(alibi_slopes(heads), bloom[:, 0, 1], rtol=1e-6, atol=0)


def test_alibi_paper_slopes_for_8_heads():
    assert alibi_slopes(8).tolist() == pytest.approx([2 ** -(i + 1) for i in range(8)])


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 40), (8, 20)])
def test_t5_buckets_match_transformers(bidirectional, num_buckets, max_distance):
    relative = torch.arange(-300, 300).view(1, -1)
    ours = t5_relative_buckets(relative, bidirectional, num_buckets, max_distance)
    theirs = T5Attention._relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("scaling", ["linear", "yarn"])
def test_rope_scaling_matches_transformers(scaling):
    config = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        max_position_embeddings=256,
        rope_parameters={
            "rope_type": scaling,
            "factor": 4.0,
            "rope_theta": 10000.0,
            "original_max_position_embeddings": 64,
        },
    )
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[scaling](config, "cpu")
    ours = RotaryEncoding(StackDims(64, 4, 16, False, 64), scaling=scaling, factor=4.0, original_max_length=64)
    torch.testing.assert_close(ours.inv_freq, inv_freq, rtol=1e-6, atol=1e-9)
    assert ours.attention_factor == pytest.approx(attention_factor)


def test_rope_ntk_changes_the_base():
    ours = RotaryEncoding(StackDims(64, 4, 16, False, 64), base=10000.0, scaling="ntk", factor=4.0)
    base = 10000.0 * 4.0 ** (16 / 14)
    expected = base ** (-torch.arange(0, 16, 2, dtype=torch.float32) / 16)
    torch.testing.assert_close(ours.inv_freq, expected)


def test_rope_preserves_norms_and_depends_only_on_offsets():
    rope = RotaryEncoding(DIMS)
    x = torch.randn(2, 4, 10, 8)
    cos, sin = rope.cos_sin(torch.arange(10), torch.float32)
    torch.testing.assert_close(rotate(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
    q, k = torch.randn(8), torch.randn(8)

    def score(i, j):
        (ci, si), (cj, sj) = (
            rope.cos_sin(torch.tensor([i]), torch.float32),
            rope.cos_sin(torch.tensor([j]), torch.float32),
        )
        return (rotate(q, ci[0], si[0]) @ rotate(k, cj[0], sj[0])).item()

    assert score(3, 7) == pytest.approx(score(103, 107), abs=1e-4)
    assert score(3, 7) != pytest.approx(score(3, 9), abs=1e-4)


class FakeAttention(torch.nn.Module):
    """Just what the backend reads from an attention module."""

    def __init__(self, encoding, causal=False):
        super().__init__()
        self.is_causal = causal
        self.__dict__["_posenc"] = (encoding, PositionContext(causal))


def run_backend(encoding, q, k, v, mask=None, causal=False, position_ids=None):
    module = FakeAttention(encoding, causal)
    kwargs = {"position_ids": position_ids} if position_ids is not None else {}
    out, _ = posenc_attention_forward(module, q, k, v, mask, scaling=q.shape[-1] ** -0.5, **kwargs)
    return out


def reference_attention(name, encoding, q, k, v, qpos, kpos):
    """Each encoding's formula written out with an explicit (Q, K, D) table: slow and obviously right."""
    d = q.shape[-1]
    rel = qpos[:, None] - kpos[None, :]  # i - j
    scores = q @ k.transpose(-1, -2)
    value_term = 0
    if name in ("relative_key", "relative_key_query"):
        r = encoding.distance_embedding.weight[
            rel.clamp(-encoding.max_distance, encoding.max_distance) + encoding.max_distance
        ]
        scores = scores + torch.einsum("bhqd,qkd->bhqk", q, r)
        if name == "relative_key_query":
            scores = scores + torch.einsum("bhkd,qkd->bhqk", k, r)
    if name == "nezha":
        r = encoding.table[(-rel).clamp(-encoding.max_distance, encoding.max_distance) + encoding.max_distance]
        scores = scores + torch.einsum("bhqd,qkd->bhqk", q, r)
    if name == "rope":
        qc, qs = encoding.cos_sin(qpos, q.dtype)
        kc, ks = encoding.cos_sin(kpos, q.dtype)
        scores = rotate(q, qc, qs) @ rotate(k, kc, ks).transpose(-1, -2)
    scores = scores / math.sqrt(d)
    if name == "alibi":
        scores = scores - encoding.slopes.view(1, -1, 1, 1) * rel.abs()
    if name == "t5":
        buckets = T5Attention._relative_position_bucket(-rel, True, encoding.num_buckets, encoding.max_distance)
        scores = scores + encoding.relative_attention_bias(buckets).permute(2, 0, 1)
    probs = scores.softmax(-1)
    if name == "nezha":
        value_term = torch.einsum("bhqk,qkd->bhqd", probs, r)
    return (probs @ v + value_term).transpose(1, 2)


@pytest.mark.parametrize("length", [5, 40, 150])
@pytest.mark.parametrize("name", RELATIVE)
def test_relative_encodings_against_a_direct_reference(name, length):
    torch.manual_seed(0)
    options = {"max_distance": 16} if name in ("relative_key", "relative_key_query", "nezha") else {}
    encoding = build_encoding(name, DIMS, options)
    q, k, v = (torch.randn(2, 4, length, 8) for _ in range(3))
    positions = torch.arange(length)
    expected = reference_attention(name, encoding, q, k, v, positions, positions)
    torch.testing.assert_close(run_backend(encoding, q, k, v), expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", RELATIVE)
def test_relative_encodings_are_translation_invariant(name):
    torch.manual_seed(0)
    encoding = build_encoding(name, DIMS, {})
    q, k, v = (torch.randn(1, 4, 12, 8) for _ in range(3))
    plain = run_backend(encoding, q, k, v, position_ids=torch.arange(12).view(1, -1))
    shifted = run_backend(encoding, q, k, v, position_ids=torch.arange(30, 42).view(1, -1))
    torch.testing.assert_close(plain, shifted, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", RELATIVE)
def test_cached_query_sees_the_same_positions(name):
    """A single query against K cached keys gets position K-1, as the last row of the full computation."""
    torch.manual_seed(0)
    encoding = build_encoding(name, StackDims(32, 4, 8, True, 64), {})
    q, k, v = (torch.randn(1, 4, 10, 8) for _ in range(3))
    full = run_backend(encoding, q, k, v, causal=True)
    last = run_backend(encoding, q[:, :, -1:], k, v, causal=True)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=1e-5)


def test_causal_mask_applies_with_a_bias():
    torch.manual_seed(0)
    encoding = build_encoding("alibi", StackDims(32, 4, 8, True, 64), {})
    q, k, v = (torch.randn(1, 4, 6, 8) for _ in range(3))
    out = run_backend(encoding, q, k, v, causal=True)
    changed_future = v.clone()
    changed_future[:, :, 3:] += 1.0
    torch.testing.assert_close(run_backend(encoding, q, k, changed_future, causal=True)[:, :3], out[:, :3])


def test_registry_refuses_duplicates_and_resolves_aliases():
    with pytest.raises(ValueError, match="already registered"):
        register_encoding("alibi")(type("Again", (ENCODINGS["alibi"],), {}))
    assert all(canonical_name(alias) == target for alias, target in ALIASES.items())
    with pytest.raises(ValueError, match="Valid encodings"):
        canonical_name("absolute_but_wrong")


def test_every_encoding_documents_itself():
    for name, cls in ENCODINGS.items():
        assert cls.name == name and cls.citation and cls.step0 and cls.__doc__, name
        assert cls.kind in ("absolute", "relative", "none")


def test_derived_tables_are_not_saved():
    for name in ENCODINGS:
        encoding = build_encoding(name, DIMS, {})
        learned = {k for k, _ in encoding.named_parameters()}
        assert set(encoding.state_dict()) == learned, name  # buffers (sinusoids, slopes, inv_freq) are derived


@pytest.mark.parametrize("name,buffer", [("rope", "inv_freq"), ("alibi", "slopes"), ("nezha", "table")])
def test_derived_tables_stay_fp32_through_dtype_casts(name, buffer):
    encoding = build_encoding(name, DIMS, {})
    exact = getattr(encoding, buffer).clone()
    encoding.to(torch.bfloat16)
    assert getattr(encoding, buffer).dtype == torch.float32
    assert torch.equal(getattr(encoding, buffer), exact)
