"""The optimized attention paths against a direct reference: values and gradients, fp32 and bf16.

The reference is explicit eager attention with each encoding's formula written out plainly, with an (L, L, D) table of
relative vectors where the encoding has one: slow and obviously right. The optimized path runs the fused SDPA kernel
on blocks of query rows with the bias detached, and recomputes each block in backward (`hf_posenc.blockwise`). Block
sizes are made small here so that every length below spans several blocks. No timings are asserted here: performance
lives in `benchmarks/` (see `hf_posenc.bench`).
"""

from __future__ import annotations

import argparse

import pytest
import torch
from tiny_models import tiny_model, token_ids
from transformers import AttentionInterface
from transformers.models.t5.modeling_t5 import T5Attention

import hf_posenc
from hf_posenc import bench, blockwise
from hf_posenc.attention import BACKEND, posenc_attention_forward, register_backend
from hf_posenc.encodings import AttentionOptions, PositionContext, Positions, StackDims, build_encoding, rotate

HEADS, HEAD_DIM = 4, 8
RELATIVE = ["relative_key", "relative_key_query", "nezha", "t5", "alibi", "rope"]
OPTIONS = {
    "relative_key": {"max_distance": 16},
    "relative_key_query": {"max_distance": 16},
    "nezha": {"max_distance": 8},
}
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


def reference(name, encoding, q, k, v, mask=None, causal=False, positions=None, factors=None):
    """Eager attention with the encoding's formula written out; (B, H, Q, D) in, (B, Q, H, D) out.

    Positions: keys 0..K-1 and queries the last Q of them, or `positions` = (query positions, key positions).
    `factors` (B,): log attention scaling, one factor per input on `q.k` alone (not on the relative terms)."""
    q, k, v = q.float(), k.float(), v.float()
    q_len, k_len = q.shape[2], k.shape[2]
    kpos = torch.arange(k_len)
    qpos = kpos[k_len - q_len :]
    if positions is not None:
        qpos, kpos = positions
    rel = qpos[:, None] - kpos[None, :]  # i - j
    factor = 1.0 if factors is None else factors.view(-1, 1, 1, 1)
    scores = q @ k.transpose(-1, -2) * factor
    if name in ("relative_key", "relative_key_query", "nezha"):
        r = relative_vectors(name, encoding, rel)
        scores = scores + torch.einsum("bhqd,qkd->bhqk", q, r)
        if name == "relative_key_query":
            scores = scores + torch.einsum("bhkd,qkd->bhqk", k, r)
    if name == "rope":
        (qc, qs), (kc, ks) = encoding.cos_sin(qpos, torch.float32), encoding.cos_sin(kpos, torch.float32)
        scores = rotate(q, qc, qs) @ rotate(k, kc, ks).transpose(-1, -2) * factor
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

    def __init__(self, encoding, causal, options=None):
        super().__init__()
        self.is_causal = causal
        self.__dict__["_posenc"] = (encoding, PositionContext(causal, options or AttentionOptions()))


def optimized(encoding, q, k, v, mask=None, causal=False, position_ids=None, options=None):
    kwargs = {} if position_ids is None else {"position_ids": position_ids}
    module = FakeAttention(encoding, causal, options)
    out, _ = posenc_attention_forward(module, q, k, v, mask, scaling=HEAD_DIM**-0.5, **kwargs)
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


def assert_matches(name, encoding, q, k, v, tolerance, mask=None, causal=False, position_ids=None):
    positions = None if position_ids is None else (position_ids[0, -q.shape[2] :], position_ids[0])
    got = values_and_grads(lambda: optimized(encoding, q, k, v, mask, causal, position_ids), encoding, q, k, v)
    want = values_and_grads(lambda: reference(name, encoding, q, k, v, mask, causal, positions), encoding, q, k, v)
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


@pytest.mark.parametrize("name", RELATIVE)
def test_padding_mask(name):
    encoding, q, k, v = make_case(name, 70, torch.float32)
    mask = torch.ones(2, 1, 70, 70, dtype=torch.bool)
    mask[1, ..., 50:] = False  # the second sequence is padded after 50 tokens
    assert_matches(name, encoding, q, k, v, FP32, mask=mask)


@pytest.mark.parametrize("name", RELATIVE)
def test_log_scaling_takes_each_inputs_own_length(name):
    """Log attention scaling in a padded batch: each input's `q.k` sharpened by log(its length) / log(16), its
    relative terms not; values and gradients, on the fused path (t5, alibi, rope) and the blockwise one."""
    encoding, q, k, v = make_case(name, 70, torch.float32)
    mask = torch.ones(2, 1, 70, 70, dtype=torch.bool)
    mask[1, ..., 50:] = False
    options = AttentionOptions("log", 16)
    factors = torch.tensor([70.0, 50.0]).log() / torch.tensor(16.0).log()
    got = values_and_grads(lambda: optimized(encoding, q, k, v, mask, options=options), encoding, q, k, v)
    want = values_and_grads(lambda: reference(name, encoding, q, k, v, mask, factors=factors), encoding, q, k, v)
    for a, b in zip([got[0], *got[1]], [want[0], *want[1]]):
        torch.testing.assert_close(a, b, **FP32)
    longest = values_and_grads(  # not the factor of the longest input for both (the old behaviour)
        lambda: reference(name, encoding, q, k, v, mask, factors=factors[:1].expand(2)), encoding, q, k, v
    )
    assert float((got[0][1, :50] - longest[0][1, :50]).detach().abs().max()) > 1e-3


@pytest.mark.parametrize("q_len", [1, 9, 40])
@pytest.mark.parametrize("name", RELATIVE)
def test_causal_with_cached_keys(name, q_len):
    """A decoder: causal mask, queries at the last q_len of 40 positions (cached decoding when q_len < 40)."""
    if name == "rope" and 1 < q_len < 40:
        pytest.skip("rope goes to transformers' SDPA function, which reads is_causal with Q < K as a static cache")
    encoding, q, k, v = make_case(name, q_len, torch.float32, causal=True, k_len=40)
    assert_matches(name, encoding, q, k, v, FP32, causal=True)


@pytest.mark.parametrize("name", RELATIVE)
def test_explicit_position_ids(name):
    """Caller-given positions (here shifted and with a gap) take the gather forms instead of the window forms."""
    encoding, q, k, v = make_case(name, 45, torch.float32)
    position_ids = torch.cat([torch.arange(5, 25), torch.arange(40, 65)]).unsqueeze(0)
    assert_matches(name, encoding, q, k, v, FP32, position_ids=position_ids)


@pytest.mark.parametrize("name", RELATIVE)
def test_inference_path(name):
    """Without gradients: one SDPA call with a cached bias (t5, alibi), or the forward blocks (NEZHA's fused band)."""
    encoding, q, k, v = make_case(name, 130, torch.float32)
    with torch.no_grad():
        got = optimized(encoding, q, k, v)
        again = optimized(encoding, q, k, v)  # a cached bias is reused
    torch.testing.assert_close(got, reference(name, encoding, q, k, v).detach(), **FP32)
    torch.testing.assert_close(again, got, rtol=0, atol=0)


def test_t5_cached_bias_follows_weight_updates():
    encoding, q, k, v = make_case("t5", 50, torch.float32)
    with torch.no_grad():
        optimized(encoding, q, k, v)
        encoding.relative_attention_bias.weight.mul_(-2.0)  # as an optimizer step would: in place
        got = optimized(encoding, q, k, v)
    torch.testing.assert_close(got, reference("t5", encoding, q, k, v).detach(), **FP32)


def test_dropout_falls_back_to_autograd():
    """With attention dropout in a differentiated call, recomputation cannot replay the dropout mask: the terms are
    materialized and differentiated by autograd. A negligible rate keeps the result comparable to the reference."""
    encoding, q, k, v = make_case("relative_key", 37, torch.float32)
    terms = encoding.attend(q, k, Positions.default(37, 37, q.device), PositionContext(False))

    def run():
        out = blockwise.blockwise_attention(q, k, v, terms.rows, None, False, HEAD_DIM**-0.5, dropout=1e-9)
        return out.transpose(1, 2)

    got = values_and_grads(run, encoding, q, k, v)
    want = values_and_grads(lambda: reference("relative_key", encoding, q, k, v), encoding, q, k, v)
    for a, b in zip([got[0], *got[1]], [want[0], *want[1]]):
        torch.testing.assert_close(a, b, **FP32)


LEARNED_OR_QUERY_DEPENDENT = ["t5", "relative_key", "relative_key_query", "nezha"]


@pytest.mark.parametrize("name", LEARNED_OR_QUERY_DEPENDENT)
def test_training_keeps_no_square_tensor_for_backward(name):
    """What autograd saves for backward is O(L) per head: no (B, H, Q, K) bias or probabilities."""
    encoding, q, k, v = make_case(name, 200, torch.float32, batch=1)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        optimized(encoding, q, k, v).sum().backward()
    assert saved and max(saved) < HEADS * 200 * 200 / 4, sorted(saved)[-3:]


@pytest.mark.parametrize("name", [*LEARNED_OR_QUERY_DEPENDENT, "alibi"])
def test_training_keeps_the_fused_kernel(name):
    """Forward + backward never reaches SDPA's math kernel, which a bias that needs gradients would select."""
    encoding, q, k, v = make_case(name, 64, torch.float32)
    with torch.profiler.profile() as profile:
        optimized(encoding, q, k, v).sum().backward()
    kernels = {event.key for event in profile.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels
    assert "aten::_scaled_dot_product_attention_math" not in kernels


# ---------------------------------------------------------------------------------------------------------------------
# A whole patched model against the same model with plain eager reference attention
# ---------------------------------------------------------------------------------------------------------------------


def reference_backend(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """An attention function for transformers' interface that runs `reference` with the module's encoding."""
    encoding, _ = module.__dict__["_posenc"]
    causal = bool(getattr(module, "is_causal", False)) if is_causal is None else is_causal
    mask = attention_mask if attention_mask is None or attention_mask.dtype == torch.bool else attention_mask == 0
    return reference(encoding.name, encoding, query, key, value, mask, causal and attention_mask is None), None


@pytest.fixture
def reference_attention():
    """Swap the registered `posenc` attention function for `reference_backend`; restore it afterwards."""
    AttentionInterface.register(BACKEND, reference_backend)
    yield
    register_backend()


def model_gradients(model, ids, mask):
    model.zero_grad()
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    hidden.square().mean().backward()
    return hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", RELATIVE)
def test_patched_model_matches_eager_reference(name, request):
    """Train mode (dropout 0), a padded batch of 90 tokens (past the 64 trained positions): the hidden states and
    every parameter's gradient equal those of the same model running the reference attention."""
    options = {"max_distance": 16} if name in ("relative_key", "relative_key_query", "nezha") else {}
    model = hf_posenc.patch_model(tiny_model("bert"), name, **options).train()
    for parameter in model.parameters():  # nonzero learned relative terms
        torch.nn.init.normal_(parameter, std=0.3) if parameter.dim() == 2 and parameter.shape[0] < 40 else None
    ids, mask = token_ids(2, 90), torch.ones(2, 90, dtype=torch.long)
    mask[1, 70:] = 0
    got = model_gradients(model, ids, mask)
    request.getfixturevalue("reference_attention")
    want = model_gradients(model, ids, mask)
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)
    assert got[1].keys() == want[1].keys()
    for parameter_name in want[1]:
        torch.testing.assert_close(got[1][parameter_name], want[1][parameter_name], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark harness's bookkeeping (its numbers live in benchmarks/results, never in tests)
# ---------------------------------------------------------------------------------------------------------------------


def test_bench_times_every_encoding_against_the_baseline(monkeypatch):
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=30522)
    monkeypatch.setitem(bench.SHAPES, "tiny", bench.Shape("bert", tiny, 64, 4096, 4096))
    grid = bench.Grid(("tiny",), (80,), (2,), budget_s=0.0, min_reps=3, max_reps=3)
    records = bench.time_case(bench.Case("tiny", 80, 2, "train"), ("alibi", "relative_key"), grid)
    assert [r["encoding"] for r in records] == [bench.BASELINE, "alibi", "relative_key"]
    assert records[0]["ratio"] == 1.0 and all(r["reps"] == 3 and r["median_s"] > 0 for r in records)


def test_bench_checks_targets_and_renders_markdown():
    def timing(encoding, ratio, mode="forward", length=512):
        return dict(shape="minilm", length=length, batch=1, mode=mode, encoding=encoding, median_s=0.1, ratio=ratio,
                    ratio_q1=ratio, ratio_q3=ratio, reps=3)  # fmt: skip

    def memory(encoding, peak):
        return dict(shape="minilm", length=2048, batch=1, mode="train", encoding=encoding, rss_before_mib=400.0,
                    peak_rss_mib=peak, step_peak_mib=peak - 400.0)  # fmt: skip

    results = {
        "meta": {**bench.machine_info(), "preset": "synthetic"},
        "timing": [
            timing(bench.BASELINE, 1.0),
            timing("alibi", 1.08),
            timing("nezha", 1.6),
            timing("t5", 1.4, "train"),
        ],
        "memory": [memory(bench.BASELINE, 1000.0), memory("alibi", 1300.0), memory("t5", 1300.0)],
    }
    verdicts = {(t["check"], t["encoding"]): t["met"] for t in bench.check_targets(results)}
    assert verdicts == {
        ("forward", "alibi"): True,  # 1.08 <= 1.10
        ("forward", "nezha"): False,  # 1.6 > 1.5
        ("train", "t5"): True,  # 1.4 <= 1.5
        ("memory", "alibi"): False,  # 1.3 > 1.2: no learned bias
        ("memory", "t5"): True,  # 1.3 <= 2: a learned bias
    }
    results["targets"] = bench.check_targets(results)
    markdown = bench.render_markdown(results)
    assert (
        "## Targets: 3 of 5 met" in markdown and "| forward | nezha | minilm | 512 | 1.60 | 1.5 | **no** |" in markdown
    )


def test_bench_refuses_bad_sizes():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(ValueError, match="Lengths and batch sizes must be >= 1"):
        bench.grid_from_args(parser.parse_args(["--lengths", "0"]))


def test_bench_reads_the_sdpa_kernels_off_the_profiler():
    """The kernel report of the benchmark (its GPU check relies on it): the CPU's fused kernel, hf_posenc's blockwise
    recompute for a learned query-dependent bias, and the math kernel when attention dropout is on."""
    ids = token_ids(1, 40)

    def steps(model):
        def forward():
            with torch.no_grad():
                model(input_ids=ids)

        def train():
            model(input_ids=ids).last_hidden_state.square().mean().backward()

        return forward, train

    forward, train = steps(hf_posenc.patch_model(tiny_model("bert"), "relative_key").train())
    assert bench.sdpa_kernels(forward) == {"forward": "flash (cpu)", "backward": "-"}
    assert bench.sdpa_kernels(train) == {"forward": "flash (cpu)", "backward": "recompute"}
    _, train = steps(hf_posenc.patch_model(tiny_model("bert"), "alibi").train())
    assert bench.sdpa_kernels(train) == {"forward": "flash (cpu)", "backward": "flash (cpu)"}
    dropout = tiny_model("bert")
    dropout.config.attention_probs_dropout_prob = 0.1
    for layer in dropout.encoder.layer:
        layer.attention.self.dropout.p = 0.1
    _, train = steps(hf_posenc.patch_model(dropout, "alibi").train())
    assert bench.sdpa_kernels(train) == {"forward": "math", "backward": "autograd"}
