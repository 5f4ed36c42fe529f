"""The `posenc` attention backend, registered in transformers' `AttentionInterface`.

Every attention module of a patched model calls this function (transformers dispatches on
`config._attn_implementation`). Self-attention modules carry `module._posenc = (encoding, context)`; the function
applies the encoding and hands the result to transformers' own SDPA function. Cross-attention modules carry nothing and
go straight to SDPA, position-free. The model's `forward` is never copied.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .encodings import AttentionTerms, PositionContext, Positions

BACKEND = "posenc"


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
    """Attention with the module's position encoding applied; same signature and output as SDPA's."""
    state = module.__dict__.get("_posenc")
    if state is None:  # cross-attention: position-free by design
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    encoding, context = state
    positions = _positions(query, key, kwargs.pop("position_ids", None), context)
    terms = encoding.attend(query, key, positions, context)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    if terms.value_table is not None:
        output = _attention_with_value_term(
            terms, value, attention_mask, dropout if module.training else 0.0, scaling, causal
        )
        return output, None
    if terms.bias is not None:
        attention_mask = _merged_mask(terms, attention_mask, causal, context)
        causal = False
    return sdpa_attention_forward(
        module, terms.query, terms.key, value, attention_mask, dropout, scaling, causal, **kwargs
    )


def _positions(query: torch.Tensor, key: torch.Tensor, position_ids, context: PositionContext) -> Positions:
    """Default positions (keys 0..K-1, queries the last Q of them) unless the caller passed `position_ids`."""
    q_len, k_len = query.shape[2], key.shape[2]

    def compute() -> Positions:
        if position_ids is None:
            return Positions.default(q_len, k_len, query.device)
        ids = position_ids[0] if position_ids.shape[0] == 1 else position_ids
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
    if attention_mask is None:
        return bias
    if attention_mask.dtype == torch.bool:
        return torch.where(attention_mask, bias, torch.finfo(bias.dtype).min)
    return bias + attention_mask


def _merged_mask(terms: AttentionTerms, attention_mask, causal: bool, context: PositionContext) -> torch.Tensor:
    """Bias and mask as one additive float mask; merged once per forward when the bias is shared by the layers."""
    if not terms.shared_bias:
        return _merge(terms.bias, attention_mask, causal)
    key = ("merged", id(terms.bias), id(attention_mask), causal)
    return context.memo(key, lambda: _merge(terms.bias, attention_mask, causal))


def _attention_with_value_term(
    terms: AttentionTerms, value: torch.Tensor, attention_mask, dropout: float, scaling: float | None, causal: bool
) -> torch.Tensor:
    """Explicit attention for encodings with a value term (NEZHA): the term needs the probabilities themselves.

    The value term `sum_j p_ij table[index[i, j]]` is computed by summing probabilities per distance bucket (a
    scatter-add into (B, H, Q, R)) and multiplying by the (R, D) table, never building an (L, L, D) tensor.
    """
    query, key = terms.query, terms.key
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    scores = _merge(scores + terms.bias, attention_mask, causal)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=dropout > 0)
    index = terms.value_index if terms.value_index.dim() == 2 else terms.value_index.unsqueeze(1)
    per_bucket = probs.new_zeros(*probs.shape[:-1], terms.value_table.shape[0])
    per_bucket = per_bucket.scatter_add(-1, index.expand_as(probs), probs)
    output = torch.matmul(probs, value) + torch.matmul(per_bucket, terms.value_table)
    return output.transpose(1, 2).contiguous()


def register_backend() -> None:
    """Register the attention function and its mask function under the same name.

    Without the mask function, transformers hands a custom backend `attention_mask=None` and padding is silently
    ignored; `sdpa_mask` gives the boolean (B, 1, Q, K) mask that SDPA itself receives.
    """
    AttentionInterface.register(BACKEND, posenc_attention_forward)
    AttentionMaskInterface.register(BACKEND, sdpa_mask)
