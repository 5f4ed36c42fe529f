"""The `posenc` attention backend, registered in transformers' `AttentionInterface`.

Every attention module of a patched model calls this function (transformers dispatches on
`config._attn_implementation`). Self-attention modules carry `module._posenc = (encoding, context)`; the function
applies the encoding and hands the result to transformers' own SDPA function. Cross-attention modules carry nothing and
go straight to SDPA, position-free. The model's `forward` is never copied.

Terms that SDPA cannot take as they are (a bias that needs gradients or depends on the query, a value term) go to
`hf_posenc.blockwise`, which keeps SDPA's fused kernel and recomputes the gradients block by block.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .blockwise import blockwise_attention, merge_bias_mask
from .encodings import AttentionTerms, PositionContext, Positions

BACKEND = "posenc"
ATTACHED_ATTRIBUTE = "_posenc"
"""Where a self-attention module carries its `(encoding, context)`: in `__dict__`, not a registered submodule, so a
shared encoding is not registered (and saved) once per layer."""


def attach(module: torch.nn.Module, encoding, context: PositionContext) -> None:
    """Attach a relative encoding (or None: attention options only) and its stack's context to a self-attention
    module, for the backend to apply."""
    module.__dict__[ATTACHED_ATTRIBUTE] = (encoding, context)


def attached(module: torch.nn.Module) -> tuple | None:
    """The `(encoding, context)` attached to an attention module, or None (cross-attention, unpatched)."""
    return module.__dict__.get(ATTACHED_ATTRIBUTE)


def detach(module: torch.nn.Module) -> None:
    module.__dict__.pop(ATTACHED_ATTRIBUTE, None)


def posenc_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention with the module's position encoding and attention options applied; same signature and output as
    SDPA's. In a patched model position ids come from the stack's context (`hf_posenc.state.ExplicitPositions`), not
    from `kwargs`: BART hands one stack's ids to both of its stacks. A context that no model routes ids into (a bare
    attention call) takes `position_ids` from `kwargs`."""
    given = kwargs.pop("position_ids", None)
    kwargs.pop("decoder_position_ids", None)  # BART hands it to every layer of both stacks
    state = attached(module)
    if state is None:  # cross-attention: position-free by design
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    encoding, context = state
    positions = _positions(query, key, context.position_ids if context.routed else given, context)
    terms = AttentionTerms(query, key) if encoding is None else encoding.attend(query, key, positions, context)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    scaling = _scaling(context, query, key, attention_mask, scaling)
    if context.options.window is not None and context.options.window // 2 < key.shape[2] - 1:
        attention_mask = _local_mask(context, attention_mask, query.shape[2], key.shape[2], causal, query.device)
        causal = False  # folded into the local mask
    if terms.rows is not None and (terms.bias is None or _differentiated(terms, value)):
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        dropout = dropout if module.training else 0.0
        output = blockwise_attention(
            terms.query, terms.key, value, terms.rows, attention_mask, causal, scaling, dropout
        )
        return output.transpose(1, 2).contiguous(), None
    if terms.bias is not None:
        attention_mask = _merged_mask(terms, attention_mask, causal, context)
        causal = False
    if isinstance(scaling, torch.Tensor):  # one factor per input: on the query, as SDPA takes one float
        terms, scaling = replace(terms, query=(terms.query * scaling).to(terms.query.dtype)), 1.0
    return sdpa_attention_forward(
        module, terms.query, terms.key, value, attention_mask, dropout, scaling, causal, **kwargs
    )


def _scaling(context: PositionContext, query: torch.Tensor, key: torch.Tensor, attention_mask, scaling: float | None):
    """The model's scaling, sharpened by log attention scaling past the reference length (exactly unchanged up to it).

    Each input takes the factor of its own length, padding not counted: one float when the call has no padding mask
    (every input has all `K` keys), else a (B, 1, 1, 1) tensor of per-input scalings.
    """
    options = context.options
    if options.scale is None or key.shape[2] <= options.scale_length:
        return scaling
    base = query.shape[-1] ** -0.5 if scaling is None else scaling
    if attention_mask is None:
        return base * options.scale_factor(key.shape[2])

    def compute() -> torch.Tensor:
        return base * options.scale_factors(key_counts(attention_mask)).view(-1, 1, 1, 1)

    return context.memo(("log scale", id(attention_mask), key.shape[2], base), compute)


def key_counts(attention_mask: torch.Tensor) -> torch.Tensor:
    """How many keys each input of a (B | 1, 1 | H, Q, K) boolean or additive mask attends to, (B | 1,).

    Counted on the last query row: a padding mask gives every query row the same keys, and under a causal mask the
    last query sees every key that is not padding.
    """
    last = attention_mask[:, 0, -1, :]
    allowed = last if last.dtype == torch.bool else last > torch.finfo(last.dtype).min / 2
    return allowed.sum(-1)


def _local_mask(context: PositionContext, attention_mask, q_len: int, k_len: int, causal: bool, device):
    """The padding / causal mask restricted to the local + global pattern (called only when the window does not
    cover every key: then attention is full, and exactly as without a window), as one boolean mask built once per
    forward and shared by the layers (never a float (Q, K) tensor: SDPA takes the boolean mask on its fused path)."""

    def compute() -> torch.Tensor:
        allowed = context.options.band(q_len, k_len, device)
        if causal and q_len > 1:
            allowed = allowed & _causal_mask(q_len, k_len, device)
        if attention_mask is None:
            return allowed
        if attention_mask.dtype != torch.bool:
            return attention_mask.masked_fill(~allowed, torch.finfo(attention_mask.dtype).min)
        allowed = attention_mask & allowed
        # A padded query may find no key in its window: let it see itself (its output is ignored), or softmax gives
        # NaN, which would leak through the next layer's masked keys (0 * NaN).
        itself = torch.arange(k_len, device=device) == torch.arange(k_len - q_len, k_len, device=device).unsqueeze(-1)
        return allowed | (itself & ~allowed.any(-1, keepdim=True))

    key = ("local", q_len, k_len, causal, None if attention_mask is None else id(attention_mask))
    return context.memo(key, compute)


def _positions(query: torch.Tensor, key: torch.Tensor, position_ids, context: PositionContext) -> Positions:
    """Default positions (keys 0..K-1, queries the last Q of them) unless the caller passed `position_ids`."""
    q_len, k_len = query.shape[2], key.shape[2]

    def compute() -> Positions:
        if position_ids is None:
            return Positions.default(q_len, k_len, query.device)
        ids = position_ids[0] if position_ids.shape[0] == 1 else position_ids
        ids = ids.to(query.device)
        if ids.shape[-1] == k_len:
            return Positions(query=ids[..., k_len - q_len :], key=ids)
        return Positions(query=ids, key=torch.arange(k_len, device=query.device))

    return context.memo(("positions", q_len, k_len, id(position_ids)), compute)


def _causal_mask(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Bottom-right aligned: query i (at position k_len - q_len + i) sees keys up to itself."""
    return torch.arange(k_len, device=device) <= torch.arange(k_len - q_len, k_len, device=device).unsqueeze(-1)


def _merge(bias: torch.Tensor, attention_mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    q_len, k_len = bias.shape[-2:]
    if attention_mask is None and causal and q_len > 1:
        attention_mask = _causal_mask(q_len, k_len, bias.device)
    return merge_bias_mask(bias, attention_mask, bias.dtype)


def _merged_mask(terms: AttentionTerms, attention_mask, causal: bool, context: PositionContext) -> torch.Tensor:
    """Bias and mask as one additive float mask; merged once per forward when the bias is shared by the layers."""
    if not terms.shared_bias:
        return _merge(terms.bias, attention_mask, causal)
    key = ("merged", id(terms.bias), id(attention_mask), causal)
    return context.memo(key, lambda: _merge(terms.bias, attention_mask, causal))


def _differentiated(terms: AttentionTerms, value: torch.Tensor) -> bool:
    """Whether autograd will differentiate this call: then a learned bias must take the blockwise path, where the
    fused kernel runs with the bias detached and its gradient is recomputed block by block."""
    tensors = (terms.query, terms.key, value, *terms.rows.inputs)
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def register_backend() -> None:
    """Register the attention function and its mask function under the same name.

    Without the mask function, transformers hands a custom backend `attention_mask=None` and padding is silently
    ignored; `sdpa_mask` gives the boolean (B, 1, Q, K) mask that SDPA itself receives.
    """
    AttentionInterface.register(BACKEND, posenc_attention_forward)
    AttentionMaskInterface.register(BACKEND, sdpa_mask)
