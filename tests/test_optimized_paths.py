"""The optimized attention paths (issue 6) against a direct reference: values and gradients, fp32 and bf16.

The reference is explicit eager attention with each encoding's formula written out plainly, with an (L, L, D) table of
relative vectors where the encoding has one: slow and obviously right. The optimized path runs the fused SDPA kernel
on blocks of query rows with the bias detached, and recomputes each block in backward (`hf_posenc.blockwise`). Block
sizes are made small here so that every length below spans several blocks. No timings are asserted here: performance
lives in `benchmarks/` (see `hf_posenc.bench`).
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import token_ids, tiny_model
from transformers import AttentionInterface
from transformers.models.t5.modeling_t5 import T5Attention

import hf_posenc
from hf_posenc import blockwise
from hf_posenc.attention import BACKEND, posenc_attention_forward, register_backend
from hf_posenc.encodings import PositionContext, StackDims, build_encoding, rotate

HEADS, HEAD_DIM = 4, 8
RELATIVE = ["relative_key", "relative_key_query", "nezha", "t5", "alibi", "rope"]
OPTIONS = {"relative_key": {"max_distance": 16}, "relative_key_query": {"max_distance": 16}, "nezha": {"max_distance": 8}}
LENGTHS = [1, 37, 130]
FP32 = {"atol": 2e-5, "rtol": 2e-5}
BF16 = {"atol": 3e-2, "rtol": 3e-2}
"""bf16: inputs are rounded to bf16 (8 bits of mantissa) and the output is rounded once more; the blockwise path
accumulates in fp32, the reference runs in fp32 on the same rounded inputs, so errors are about two bf16 ulps."""


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of 16 query rows: lengths 37 and 130 span 3 and 9 blocks."""
    monkeypatch.setattr(blockwise, "FORWARD_BLOCK_ELEMENTS", 1)
    monkeypatch.setattr(blockwise, "BACKWARD_BLOCK_ELEMENTS", 1)


def relative_vectors(name, encoding, rel):
    """The (Q, K, D) relative vectors of Shaw/Huang (index clip(i - j)) and NEZHA (index clip(j - i))."""
    k = encoding.max_distance
    if name == "nezha":
        return encoding.table.float()[(-rel).clamp(-k, k) + k]
    return encoding.distance_embedding.weight.float()[rel.clamp(-k, k) + k]  # fp32 first: gradients sum in fp32


def reference(name, encoding, q, k, v, mask=None, causal=False):
    """Eager attention with the encoding's formula written out; (B, H, Q, D) in, (B, Q, H, D) out."""
    q, k, v = q.float(), k.float(), v.float()
    q_len, k_len = q.shape[2], k.shape[2]
    kpos = torch.arange(k_len)
    qpos = kpos[k_len - q_len :]
    rel = qpos[:, None] - kpos[None, :]  # i - j
    scores = q @ k.transpose(-1, -2)
    if name in ("relative_key", "relative_key_query", "nezha"):
        r = relative_vectors(name, encoding, rel)
        scores = scores + torch.einsum("bhqd,qkd->bhqk", q, r)
        if name == "relative_key_query":
            scores = scores + torch.einsum("bhkd,qkd->bhqk", k, r)
    if name == "rope":
        (qc, qs), (kc, ks) = encoding.cos_sin(qpos, torch.float32), encoding.cos_sin(kpos, torch.float32)
        scores = rotate(q, qc, qs) @ rotate(k, kc, ks).transpose(-1, -2)
    scores = scores / HEAD_DIM**0.5
    if name == "alibi":
        scores = scores - encoding.slopes.view(1, -1, 1, 1) * rel.abs()
    if name == "t5":
        buckets = T5Attention._relative_position_bucket(-rel, not causal, encoding.num_buckets, encoding.max_distance)
        scores = scores + encoding.relative_attention_bias.weight.float()[buckets].permute(2, 0, 1)
    if causal:
        scores = scores.masked_fill(kpos[None, :] > qpos[:, None], float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(-1)
    output = probs @ v
    if name == "nezha":
        output = output + torch.einsum("bhqk,qkd->bhqd", probs, r)
    return output.transpose(1, 2)


class FakeAttention(torch.nn.Module):
    """What the backend reads from an attention module: the encoding, a per-forward memo and the causal flag."""

    def __init__(self, encoding, causal):
        super().__init__()
        self.is_causal = causal
        self.__dict__["_posenc"] = (encoding, PositionContext(causal))


def optimized(encoding, q, k, v, mask=None, causal=False):
    out, _ = posenc_attention_forward(FakeAttention(encoding, causal), q, k, v, mask, scaling=HEAD_DIM**-0.5)
    return out


def make_case(name, q_len, dtype, causal=False, batch=2, k_len=None):
    torch.manual_seed(q_len)
    dims = StackDims(HEADS * HEAD_DIM, HEADS, HEAD_DIM, causal, 64)
    encoding = build_encoding(name, dims, OPTIONS.get(name, {}))
    for parameter in encoding.parameters():  # a nonzero learned term, whatever its init
        torch.nn.init.normal_(parameter, std=0.5)
    encoding.to(dtype)
    shape = (batch, HEADS, q_len, HEAD_DIM)
    q = torch.randn(shape).to(dtype).requires_grad_()
    k, v = (torch.randn(batch, HEADS, k_len or q_len, HEAD_DIM).to(dtype).requires_grad_() for _ in range(2))
    return encoding, q, k, v


def values_and_grads(fn, encoding, q, k, v):
    """The output and the gradients of a fixed random projection of it w.r.t. q, k, v and the encoding's parameters."""
    out = fn()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    params = [p for p in encoding.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out.float() * weights).sum(), [q, k, v, *params])
    return out.float(), [g.float() for g in grads]


def assert_matches(name, encoding, q, k, v, tolerance, mask=None, causal=False):
    got = values_and_grads(lambda: optimized(encoding, q, k, v, mask, causal), encoding, q, k, v)
    want = values_and_grads(lambda: reference(name, encoding, q, k, v, mask, causal), encoding, q, k, v)
    torch.testing.assert_close(got[0], want[0], **tolerance)
    for label, a, b in zip(["query", "key", "value", "parameters"], got[1], want[1]):
        torch.testing.assert_close(a, b, **tolerance, msg=lambda m, label=label: f"grad {label}: {m}")


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("name", RELATIVE)
def test_values_and_gradients_fp32(name, length):
    encoding, q, k, v = make_case(name, length, torch.float32)
    assert_matches(name, encoding, q, k, v, FP32)


@pytest.mark.parametrize("length", [37, 130])
@pytest.mark.parametrize("name", RELATIVE)
def test_values_and_gradients_bf16(name, length):
    encoding, q, k, v = make_case(name, length, torch.bfloat16)
    assert_matches(name, encoding, q, k, v, BF16)
