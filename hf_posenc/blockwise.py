"""Attention with position terms, one block of query rows at a time, with gradients by recomputation.

Why: torch's CPU SDPA keeps its fused kernel only while the additive mask needs no gradient. A learned bias
(T5, Shaw) or a query-dependent one (Shaw, Huang, NEZHA) sends it to the math kernel, which keeps a (B, H, Q, K)
tensor per layer for backward (3-5x slower, L^2 memory); NEZHA's value term needs the probabilities themselves. Here:

* the forward runs on blocks of query rows, SDPA's fused kernel with the block's bias detached, so no (B, H, Q, K)
  tensor outlives a block; a value term clipped at a maximum distance (NEZHA) keeps the fused kernel too (two
  indicator columns appended to the values give the probability mass outside the band, the band is explicit);
* only query, key, value, the output and the encoding's small inputs are kept for backward;
* the backward recomputes each block's probabilities (as FlashAttention does, Dao et al. 2022), forms
  `dS = P * (dP - rowsum(dO * O))` and asks autograd for the position terms' own gradients, block by block.

An encoding describes its terms as `RowTerms`; `hf_posenc.attention` dispatches here. This module imports only torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

FORWARD_BLOCK_ELEMENTS = 2**22
"""Target size (elements) of one forward block's (B, H, rows, K) bias: 16 MiB in fp32. Fewer, larger blocks keep the
fused kernel efficient; staying under glibc's 32 MiB mmap threshold lets the allocator reuse the memory instead of
faulting fresh pages in for every block."""
BACKWARD_BLOCK_ELEMENTS = 2**21
"""The same for backward, where a few (B, H, rows, K) fp32 tensors (scores, probabilities, their gradients) coexist."""
GPU_BLOCK_SCALE = 64
"""On a GPU, kernel launches rather than cache sizes bound a block's cost: blocks 64x larger (2^28 / 2^27 elements,
1 GiB / 512 MiB in fp32: one or two blocks per layer up to L = 4096 at batch 1) and no row cap for windowed terms.
With the CPU's block sizes an H100 ran relative_key 11x and NEZHA 33x slower than the unpatched model at L = 2048
(benchmarks/results/gpu-bf16-cpu-blocks.md), almost all of it launch overhead of the many small blocks."""


@dataclass
class BandedValue:
    """A value term whose vector is one constant for the keys before a band of columns and another after it (a
    relative encoding clipped at a maximum distance, as NEZHA). The forward then keeps the fused kernel.

    Attributes:
        columns: `columns(rows) -> (lo, hi)`, the band of key columns of a block of query rows.
        term: `term(rows, band_probs, outside, *state) -> (B, H, r, D)`, the value term from the band's probabilities
            (B, H, r, hi - lo) and the mass before and after the band, `outside` (B, H, r, 2).
    """

    columns: Callable[[slice], tuple[int, int]]
    term: Callable[..., torch.Tensor]


@dataclass
class RowTerms:
    """Position terms of one attention call, computed for any block of query rows.

    Attributes:
        inputs: the tensors the terms depend on besides query and key (tables, indices); gradients flow to those that
            require them.
        prepare: `prepare(query, key, *inputs) -> state`, a tuple of tensors computed once per call (e.g. per-distance
            key scores); defaults to `inputs` themselves.
        bias: `bias(rows, query_rows, *state) -> (B | 1, H, len(rows), K)`, an additive score bias in units of the
            scaled scores, or None.
        value: `value(rows, probs, *state) -> (B, H, len(rows), D)`, a term added to the output that needs the
            attention probabilities `probs` (B, H, len(rows), K) (Shaw's and NEZHA's value term), or None.
        banded_value: the same value term in banded form (see `BandedValue`), for the fused forward, or None.
        forward_bias: an already computed bias for all rows that needs no gradient (a table shared by the layers of
            one forward pass); used instead of `bias` when nothing is differentiated, and sliced by the forward blocks.
        max_rows: the most query rows per forward block, or None. Terms built from a block's distinct distances
            compute about r + w of them for r rows and w columns, and a banded value term computes an r x (r + 2k)
            band explicitly, so shorter blocks cost less there.
    """

    inputs: tuple[torch.Tensor, ...] = ()
    prepare: Callable[..., tuple[torch.Tensor, ...]] | None = None
    bias: Callable[..., torch.Tensor] | None = None
    value: Callable[..., torch.Tensor] | None = None
    banded_value: BandedValue | None = None
    forward_bias: torch.Tensor | None = None
    max_rows: int | None = None

    def state(self, query: torch.Tensor, key: torch.Tensor, inputs: Sequence[torch.Tensor]) -> tuple:
        return tuple(self.prepare(query, key, *inputs)) if self.prepare is not None else tuple(inputs)


@dataclass
class _Call:
    """The non-tensor arguments of one attention call, plus the (never differentiated) mask."""

    terms: RowTerms
    mask: torch.Tensor | None
    causal: bool
    scale: float | torch.Tensor  # one float, or a (B, 1, 1, 1) fp32 tensor: one scale per input
    dropout: float
    shape: tuple[int, int, int, int]  # batch, heads, q_len, k_len
    on_gpu: bool = False

    def blocks(self, elements: int, max_rows: int | None = None) -> list[slice]:
        """Consecutive blocks of query rows whose (B, H, rows, K) tensors have about `elements` elements."""
        batch, heads, q_len, k_len = self.shape
        if self.on_gpu:
            elements, max_rows = elements * GPU_BLOCK_SCALE, None
        rows = rows_per_block(batch * heads * k_len, elements)
        rows = rows if max_rows is None else max(min(rows, max_rows), 1)
        return [slice(start, min(start + rows, q_len)) for start in range(0, q_len, rows)]


def rows_per_block(row_elements: int, elements: int) -> int:
    """A power of two, at least 16, such that that many rows of `row_elements` elements make about `elements`."""
    rows = max(elements // max(row_elements, 1), 16)
    return 1 << (rows.bit_length() - 1)


def blockwise_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    terms: RowTerms,
    attention_mask: torch.Tensor | None,
    causal: bool,
    scale: float | torch.Tensor,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Attention with `terms`; (B, H, Q, D) in, (B, H, Q, D) out (not transposed).

    `scale` multiplies `q.k` (not the terms' bias): one float, or a (B, 1, 1, 1) tensor with one scale per input.

    Differentiable in `query`, `key`, `value` and `terms.inputs`. With dropout in a differentiated call, the terms
    are materialized for all rows and autograd keeps them (recomputation would need the dropout mask replayed).
    """
    call = _Call(terms, attention_mask, causal, scale, dropout, (*query.shape[:3], key.shape[-2]), query.is_cuda)
    differentiated = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value, *terms.inputs))
    if not differentiated:
        with torch.no_grad():
            return _forward(call, query, key, value, terms.state(query, key, terms.inputs), use_forward_bias=True)
    if dropout > 0.0:  # one block, differentiated by autograd through the explicit math
        state, blocks = terms.state(query, key, terms.inputs), [slice(0, query.shape[-2])]
        return _forward(call, query, key, value, state, use_forward_bias=False, blocks=blocks)
    return _Blockwise.apply(call, query, key, value, *terms.inputs)


# ---------------------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------------------


def _forward(call: _Call, query, key, value, state: tuple, use_forward_bias: bool, blocks=None) -> torch.Tensor:
    terms, outputs = call.terms, []
    banded = _BandedForward(key, value) if terms.value is not None and _fused_banded(call) else None
    for rows in blocks or call.blocks(FORWARD_BLOCK_ELEMENTS, terms.max_rows):
        query_rows = query[..., rows, :]
        bias = _bias_rows(call, rows, query_rows, state, use_forward_bias)
        mask = _block_mask(call, rows, query.shape[-2], key.shape[-2], key.device)
        if terms.value is None:
            merged = merge_bias_mask(bias, mask, query.dtype)
            outputs.append(_sdpa(query_rows, key, value, merged, call.dropout, call.scale))
        elif banded is not None and banded.narrow(call, rows):
            outputs.append(banded(call, rows, query_rows, merge_bias_mask(bias, mask, query.dtype), state))
        else:
            probs = _probabilities(query_rows, key, bias, mask, call.scale)
            probs = torch.nn.functional.dropout(probs, call.dropout) if call.dropout > 0 else probs
            output = torch.matmul(probs, value.float()) + terms.value(rows, probs, *state)
            outputs.append(output.to(query.dtype))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-2)


def _fused_banded(call: _Call) -> bool:
    return call.terms.banded_value is not None and call.dropout == 0.0 and not torch.is_grad_enabled()


class _BandedForward:
    """The fused forward of a banded value term: SDPA over values with two indicator columns appended (keys before the
    block's band, keys after it), which give each row's probability mass outside the band; the band's probabilities
    are the softmax over the band's scores times the band's mass (1 minus the rest)."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor) -> None:
        # The fused kernel wants one head size for query, key and value: pad query and key with zeros. On a GPU the
        # size must also be a multiple of 8, or CUDA's SDPA drops to its math kernel (seen on an H100); the CPU's
        # kernel takes any size, and each extra column costs time there.
        self.key, self.head_dim = key, value.shape[-1]
        self.pad = 2 + ((-(self.head_dim + 2)) % 8 if key.is_cuda else 0)
        self.padded_key = torch.nn.functional.pad(key, (0, self.pad))
        self.values = torch.nn.functional.pad(value, (0, self.pad))
        self.columns = torch.arange(key.shape[-2], device=key.device)

    def narrow(self, call: _Call, rows: slice) -> bool:
        """Whether the block's band spans at most half the keys; for a wider band (short sequences), explicit
        attention over all keys costs less than the fused kernel plus explicit attention over the band."""
        lo, hi = call.terms.banded_value.columns(rows)
        return 2 * (hi - lo) <= len(self.columns)

    def __call__(self, call: _Call, rows: slice, query_rows, merged, state: tuple) -> torch.Tensor:
        lo, hi = call.terms.banded_value.columns(rows)
        before, after = self.head_dim, self.head_dim + 1
        self.values[..., before] = self.columns < lo
        self.values[..., after] = self.columns >= hi
        padded = torch.nn.functional.pad(query_rows, (0, self.pad))
        output = _sdpa(padded, self.padded_key, self.values, merged, 0.0, call.scale)
        outside = output[..., before : after + 1].float()
        band_merged = None if merged is None else merged[..., lo:hi]
        scores = _scores(query_rows, self.key[..., lo:hi, :], band_merged, call.scale)
        band_probs = torch.softmax(scores, dim=-1) * (1.0 - outside.sum(-1, keepdim=True)).clamp(min=0.0)
        term = call.terms.banded_value.term(rows, band_probs, outside, *state)
        return (output[..., : self.head_dim].float() + term).to(query_rows.dtype)


def _bias_rows(call: _Call, rows: slice, query_rows, state: tuple, use_forward_bias: bool) -> torch.Tensor | None:
    terms = call.terms
    if use_forward_bias and terms.forward_bias is not None:
        bias = terms.forward_bias
        return bias if bias.shape[-2] == 1 else bias[..., rows, :]
    return terms.bias(rows, query_rows, *state) if terms.bias is not None else None


def _sdpa(query, key, value, mask, dropout: float, scale: float | torch.Tensor) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):  # per-input scales: on the query, as SDPA takes one float
        query, scale = (query * scale).to(query.dtype), 1.0
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale
    )


def _block_mask(call: _Call, rows: slice, q_len: int, k_len: int, device) -> torch.Tensor | None:
    """The attention mask's rows for this block (bool or additive float), with the causal mask folded in."""
    mask = call.mask
    if mask is not None and mask.shape[-2] != 1:
        mask = mask[..., rows, :]
    if not call.causal or q_len == 1 or call.mask is not None:
        return mask
    # Bottom-right aligned: query i (at position k_len - q_len + i) sees keys up to itself.
    query_positions = torch.arange(rows.start, rows.stop, device=device) + (k_len - q_len)
    return torch.arange(k_len, device=device) <= query_positions.unsqueeze(-1)


def merge_bias_mask(bias: torch.Tensor | None, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Bias and mask as one additive mask in `dtype` (the mask alone when there is no bias); the attention backend
    merges with it too, so the two paths fill masked scores the same way."""
    if bias is None:
        return mask
    bias = bias.to(dtype)
    if mask is None:
        return bias
    if mask.dtype == torch.bool:
        return bias.masked_fill(~mask, torch.finfo(dtype).min)
    return bias + mask.to(dtype)


def _scores(query_rows, key, additive, scale: float | torch.Tensor) -> torch.Tensor:
    """One block's scaled scores in fp32 whatever the input dtype, plus an additive (float) or boolean mask.

    A float bias goes in as `baddbmm`'s input: one pass over the (B, H, r, K) scores instead of three.
    """
    batch, heads, rows, dim = query_rows.shape
    if isinstance(scale, torch.Tensor):  # per-input scales: folded into the query
        query_rows, scale = query_rows.float() * scale, 1.0
    queries, keys = _flat(query_rows.float()), _flat(key.float()).transpose(1, 2)
    if additive is None or additive.dtype == torch.bool:
        scores = torch.bmm(queries * scale, keys).view(batch, heads, rows, -1)
        return scores if additive is None else _masked(scores, additive)
    bias = _flat(additive.float().expand(batch, heads, rows, key.shape[-2]))
    return torch.baddbmm(bias, queries, keys, alpha=scale).view(batch, heads, rows, -1)


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """(B, H, n, m) -> (B * H, n, m), a view whenever the strides allow."""
    return tensor.reshape(-1, *tensor.shape[-2:])


def _masked(scores: torch.Tensor, additive: torch.Tensor) -> torch.Tensor:
    # The fill is the scores' own minimum: under autocast `bmm` returns bf16 / fp16 scores even from fp32 inputs, and
    # the fp32 minimum does not fit those.
    if additive.dtype == torch.bool:
        return scores.masked_fill(~additive, torch.finfo(scores.dtype).min)
    return scores + additive.float()


def _probabilities(query_rows, key, bias, mask, scale: float | torch.Tensor) -> torch.Tensor:
    """Softmax of one block's scores with its bias and mask, in fp32."""
    scores = _scores(query_rows, key, bias, scale)
    return torch.softmax(scores if mask is None else _masked(scores, mask), dim=-1)


# ---------------------------------------------------------------------------------------------------------------------
# Backward by recomputation
# ---------------------------------------------------------------------------------------------------------------------


class _Blockwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call: _Call, query, key, value, *inputs):
        state = call.terms.state(query, key, inputs)
        output = _forward(call, query, key, value, state, use_forward_bias=True)
        ctx.call = call
        ctx.save_for_backward(query, key, value, output, *inputs)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, output, *inputs = ctx.saved_tensors
        grads = _Gradients(ctx.call, query, key, value, inputs, ctx.needs_input_grad[1:])
        # rowsum(dO * O) over the full output (value term included) is the softmax backward's correction term.
        delta = (grad_output.float() * output.float()).sum(-1, keepdim=True)
        for rows in ctx.call.blocks(BACKWARD_BLOCK_ELEMENTS):
            grads.block(rows, grad_output[..., rows, :].float(), delta[..., rows, :])
        return None, *grads.finish()


class _Gradients:
    """Accumulates the gradients of one `_Blockwise` call over its blocks of query rows."""

    def __init__(self, call: _Call, query, key, value, inputs, needs: Sequence[bool]) -> None:
        self.call, self.query, self.dtype = call, query, query.dtype
        self.key, self.value = key.float(), value.float()
        self.needs = needs
        with torch.enable_grad():
            self.key_leaf = key.detach().requires_grad_(needs[1])
            self.query_leaf = query.detach().requires_grad_(needs[0])
            self.input_leaves = [t.detach().requires_grad_(t.requires_grad and n) for t, n in zip(inputs, needs[3:])]
            self.state = call.terms.state(self.query_leaf, self.key_leaf, self.input_leaves)
        # Low-precision tables get fp32 leaves, so that their gradients accumulate over blocks in fp32.
        self.state_leaves = [_float_leaf(s) for s in self.state]
        self.grad_query = torch.zeros_like(query, dtype=torch.float32)
        self.grad_key = torch.zeros_like(self.key)
        self.grad_value = torch.zeros_like(self.value)
        self.grad_state = [None] * len(self.state)

    def block(self, rows: slice, grad_output: torch.Tensor, delta: torch.Tensor) -> None:
        call, query_rows = self.call, self.query[..., rows, :].detach().float().requires_grad_()
        with torch.enable_grad():
            bias = call.terms.bias(rows, query_rows, *self.state_leaves) if call.terms.bias is not None else None
        mask = _block_mask(call, rows, self.query.shape[-2], self.key.shape[-2], self.key.device)
        probs = _probabilities(
            query_rows.detach(), self.key, None if bias is None else bias.detach(), mask, call.scale
        )
        # dP - rowsum(dO * O) in one pass, then dS = P * (dP - rowsum(dO * O)) in place
        shifted = torch.baddbmm(-_flat(delta), _flat(grad_output), _flat(self.value).transpose(1, 2))
        shifted = shifted.view(probs.shape)
        if call.terms.value is not None:
            shifted = shifted + self._value_term_grads(rows, probs, grad_output)
        self.grad_value += _sum_to(torch.matmul(probs.transpose(-1, -2), grad_output), self.grad_value.shape)
        grad_scores = probs.mul_(shifted)
        self.grad_query[..., rows, :] += torch.matmul(grad_scores, self.key) * call.scale
        query_float = query_rows.detach().float()
        grad_key = torch.matmul(grad_scores.transpose(-1, -2), query_float)
        if isinstance(call.scale, torch.Tensor):  # per-input scales: before summing over a broadcast batch
            self.grad_key += _sum_to(grad_key * call.scale, self.grad_key.shape)
        else:
            self.grad_key += _sum_to(grad_key, self.grad_key.shape) * call.scale
        if bias is not None:
            self._bias_grads(rows, bias, query_rows, grad_scores)

    def _value_term_grads(self, rows: slice, probs: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        probs_leaf = probs.detach().requires_grad_()
        with torch.enable_grad():
            term = self.call.terms.value(rows, probs_leaf, *self.state_leaves)
        targets = [probs_leaf, *self._differentiable_state()]
        grads = torch.autograd.grad(term, targets, grad_output.to(term.dtype), allow_unused=True)
        self._add_state_grads(grads[1:])
        return grads[0]

    def _bias_grads(self, rows: slice, bias, query_rows, grad_scores) -> None:
        if not bias.requires_grad:
            return
        targets = [query_rows, *self._differentiable_state()]
        grad_bias = _sum_to(grad_scores, bias.shape).to(bias.dtype)
        grads = torch.autograd.grad(bias, targets, grad_bias, allow_unused=True)
        if grads[0] is not None:
            self.grad_query[..., rows, :] += grads[0]
        self._add_state_grads(grads[1:])

    def _differentiable_state(self) -> list[torch.Tensor]:
        return [s for s in self.state_leaves if s.requires_grad]

    def _add_state_grads(self, grads: Sequence[torch.Tensor | None]) -> None:
        indices = [i for i, s in enumerate(self.state_leaves) if s.requires_grad]
        for index, grad in zip(indices, grads):
            if grad is not None:
                current = self.grad_state[index]
                self.grad_state[index] = grad if current is None else current + grad

    def finish(self) -> list[torch.Tensor | None]:
        """Push the state's gradients through `prepare`, then return (query, key, value, *inputs) gradients."""
        grad_inputs = [None] * len(self.input_leaves)
        pairs = [(s, g) for s, g in zip(self.state, self.grad_state) if g is not None and s.requires_grad]
        targets = [self.query_leaf, self.key_leaf, *self.input_leaves]
        wanted = [t for t in targets if t.requires_grad]
        if pairs and wanted:
            outputs, grads = zip(*((s, g.to(s.dtype)) for s, g in pairs))
            found = dict(zip(map(id, wanted), torch.autograd.grad(outputs, wanted, grads, allow_unused=True)))
            self.grad_query += _as_float(found.get(id(self.query_leaf)))
            self.grad_key += _as_float(found.get(id(self.key_leaf)))
            grad_inputs = [found.get(id(leaf)) for leaf in self.input_leaves]
        dtype = self.dtype
        return [self.grad_query.to(dtype), self.grad_key.to(dtype), self.grad_value.to(dtype), *grad_inputs]


def _float_leaf(tensor: torch.Tensor) -> torch.Tensor:
    leaf = tensor.detach()
    leaf = leaf.float() if leaf.dtype in (torch.float16, torch.bfloat16) else leaf
    return leaf.requires_grad_(tensor.requires_grad)


def _as_float(tensor: torch.Tensor | None) -> torch.Tensor | float:
    return 0.0 if tensor is None else tensor.float()


def _sum_to(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a gradient over the dimensions its target broadcast along (e.g. a bias shared by the batch)."""
    if tensor.shape == shape:
        return tensor
    dims = [i for i, (have, want) in enumerate(zip(tensor.shape, shape)) if want == 1 and have != 1]
    return tensor.sum(dim=dims, keepdim=True)
