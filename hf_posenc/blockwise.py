"""Attention with position terms, one block of query rows at a time, with gradients by recomputation.

Why (issue 6): torch's CPU SDPA keeps its fused kernel only while the additive mask needs no gradient. A learned bias
(T5, Shaw) or a query-dependent one (Shaw, Huang, NEZHA) sends it to the math kernel, which keeps a (B, H, Q, K)
tensor per layer for backward (3-5x slower, L^2 memory); NEZHA's value term needs the probabilities themselves. Here:

* the forward runs on blocks of query rows: SDPA's fused kernel with the block's bias detached, or explicit attention
  (fp32 softmax) when there is a value term, so no (B, H, Q, K) tensor outlives a block;
* only query, key, value, the output and the encoding's small inputs are kept for backward;
* the backward recomputes each block's probabilities (as FlashAttention does, Dao et al. 2022), forms
  `dS = P * (dP - rowsum(dO * O))` and asks autograd for the position terms' own gradients, block by block.

An encoding describes its terms as `RowTerms`; `hf_posenc.attention` dispatches here. This module imports only torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

BLOCK_ELEMENTS = 2**21
"""Target size (elements) of one block's (B, H, rows, K) score tensor: 8 MiB in fp32, a few of them live at once."""


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
        forward_bias: an already computed bias for all rows that needs no gradient (a table shared by the layers of
            one forward pass); used instead of `bias` when nothing is differentiated, and sliced by the forward blocks.
    """

    inputs: tuple[torch.Tensor, ...] = ()
    prepare: Callable[..., tuple[torch.Tensor, ...]] | None = None
    bias: Callable[..., torch.Tensor] | None = None
    value: Callable[..., torch.Tensor] | None = None
    forward_bias: torch.Tensor | None = None

    def state(self, query: torch.Tensor, key: torch.Tensor, inputs: Sequence[torch.Tensor]) -> tuple:
        return tuple(self.prepare(query, key, *inputs)) if self.prepare is not None else tuple(inputs)


@dataclass
class _Call:
    """The non-tensor arguments of one attention call, plus the (never differentiated) mask."""

    terms: RowTerms
    mask: torch.Tensor | None
    causal: bool
    scale: float
    dropout: float
    rows_per_block: int

    def blocks(self, q_len: int) -> list[slice]:
        return [
            slice(start, min(start + self.rows_per_block, q_len)) for start in range(0, q_len, self.rows_per_block)
        ]


def rows_per_block(batch: int, heads: int, k_len: int) -> int:
    """A power of two (at least 16) such that a block's score tensor has about `BLOCK_ELEMENTS` elements."""
    rows = max(BLOCK_ELEMENTS // max(batch * heads * k_len, 1), 16)
    return 1 << (rows.bit_length() - 1)


def blockwise_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    terms: RowTerms,
    attention_mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Attention with `terms`; (B, H, Q, D) in, (B, H, Q, D) out (not transposed).

    Differentiable in `query`, `key`, `value` and `terms.inputs`. With dropout in a differentiated call, the terms
    are materialized for all rows and autograd keeps them (recomputation would need the dropout mask replayed).
    """
    call = _Call(terms, attention_mask, causal, scale, dropout, rows_per_block(*query.shape[:2], key.shape[-2]))
    differentiated = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value, *terms.inputs))
    if not differentiated:
        with torch.no_grad():
            return _forward(call, query, key, value, terms.state(query, key, terms.inputs), use_forward_bias=True)
    if dropout > 0.0:
        call.rows_per_block = query.shape[-2]
        return _forward(call, query, key, value, terms.state(query, key, terms.inputs), use_forward_bias=False)
    return _Blockwise.apply(call, query, key, value, *terms.inputs)


# ---------------------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------------------


def _forward(call: _Call, query, key, value, state: tuple, use_forward_bias: bool) -> torch.Tensor:
    outputs = []
    for rows in call.blocks(query.shape[-2]):
        bias = _bias_rows(call, rows, query[..., rows, :], state, use_forward_bias)
        mask = _block_mask(call, rows, query.shape[-2], key.shape[-2], key.device)
        if call.terms.value is None:
            merged = _merge(bias, mask, query.dtype)
            outputs.append(_sdpa(query[..., rows, :], key, value, merged, call.dropout, call.scale))
        else:
            probs = _probabilities(query[..., rows, :], key, bias, mask, call.scale)
            probs = torch.nn.functional.dropout(probs, call.dropout) if call.dropout > 0 else probs
            output = torch.matmul(probs, value.float()) + call.terms.value(rows, probs, *state)
            outputs.append(output.to(query.dtype))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-2)


def _bias_rows(call: _Call, rows: slice, query_rows, state: tuple, use_forward_bias: bool) -> torch.Tensor | None:
    terms = call.terms
    if use_forward_bias and terms.forward_bias is not None:
        bias = terms.forward_bias
        return bias if bias.shape[-2] == 1 else bias[..., rows, :]
    return terms.bias(rows, query_rows, *state) if terms.bias is not None else None


def _sdpa(query, key, value, mask, dropout: float, scale: float) -> torch.Tensor:
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


def _merge(bias: torch.Tensor | None, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Bias and mask as one additive mask in `dtype` (the mask alone when there is no bias)."""
    if bias is None:
        return mask
    bias = bias.to(dtype)
    if mask is None:
        return bias
    if mask.dtype == torch.bool:
        return bias.masked_fill(~mask, torch.finfo(dtype).min)
    return bias + mask.to(dtype)


def _probabilities(query_rows, key, bias, mask, scale: float) -> torch.Tensor:
    """Softmax of one block's scores, in fp32 whatever the input dtype."""
    scores = torch.matmul(query_rows.float(), key.float().transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.float()
    if mask is not None:
        scores = (
            scores.masked_fill(~mask, torch.finfo(torch.float32).min) if mask.dtype == torch.bool else scores + mask
        )
    return torch.softmax(scores, dim=-1)


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
        for rows in ctx.call.blocks(query.shape[-2]):
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
        grad_probs = torch.matmul(grad_output, self.value.transpose(-1, -2))
        if call.terms.value is not None:
            grad_probs = grad_probs + self._value_term_grads(rows, probs, grad_output)
        self.grad_value += _sum_to(torch.matmul(probs.transpose(-1, -2), grad_output), self.grad_value.shape)
        grad_scores = probs.mul_(grad_probs.sub_(delta))  # dS = P * (dP - rowsum(dO * O)), in place
        self.grad_query[..., rows, :] += torch.matmul(grad_scores, self.key) * call.scale
        query_float = query_rows.detach().float()
        self.grad_key += (
            _sum_to(torch.matmul(grad_scores.transpose(-1, -2), query_float), self.grad_key.shape) * call.scale
        )
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
