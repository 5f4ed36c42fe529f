"""ALiBi (Press et al. 2022): a linear distance bias per head, no parameters."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..option_checks import check_finite_float
from .base import (
    AttentionTerms,
    Positions,
    RelativeEncoding,
    StackDims,
    default_positions_key,
    positions_key,
    register_encoding,
)


def _cached(module: nn.Module, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A bias kept on `module` across forward passes (the last key only). Recomputing an (H, L, L) bias costs about as
    much as a layer at L = 2048; keeping it costs its memory between passes.

    Only for tables that depend on nothing but the key and non-learned buffers derived from the options (ALiBi): a
    table computed from a learned parameter must go through the per-forward `PositionContext.memo` instead, since no
    key can prove a parameter unchanged between passes.
    """
    cached = module.__dict__.get("_bias_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    module.__dict__["_bias_cache"] = None  # free the old one before computing the new one
    value = compute()
    module.__dict__["_bias_cache"] = (key, value)
    return value


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The head slopes of Press et al. 2022: a geometric sequence starting at 2^(-8/n); for a head count that is not a
    power of two, the slopes of the next power of two are interleaved in, as in the paper's code and BLOOM."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != num_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra_base ** (2 * i + 1) for i in range(min(closest, num_heads - closest))]
    return torch.tensor(slopes, dtype=torch.float32)


@register_encoding("alibi")
class ALiBi(RelativeEncoding):
    """Press et al. 2022 linear biases `-m_h |i - j|`: symmetric for bidirectional attention; in decoders the causal
    mask removes `j > i`, which leaves the paper's `-m_h (i - j)`. No parameters; one bias per forward pass."""

    citation = "Press et al. 2022, Train Short, Test Long: Attention with Linear Biases (arXiv:2108.12409)"
    step0 = "adds a fixed distance penalty; the absolute table is dropped unless keep_absolute=True"

    def __init__(self, dims: StackDims, *, slope_scale: float = 1.0) -> None:
        super().__init__(dims)
        # Past 1e4 a one-token distance costs thousands of logits (attention is exactly local already) and long
        # distances overflow half precision.
        self.slope_scale = check_finite_float(self.name, "slope_scale", slope_scale, low=0.0, high=1e4, low_open=True)
        self._register_derived_tables()

    def derived_tables(self) -> dict[str, torch.Tensor]:
        return {"slopes": alibi_slopes(self.dims.num_heads) * self.slope_scale}

    def _bias(self, positions: Positions, dtype: torch.dtype) -> torch.Tensor:
        if positions.offset is None:
            distance = positions.relative().abs().to(torch.float32)  # (Q, K) or (B, Q, K)
        else:  # default positions: straight from float aranges, one (Q, K) pass fewer
            query = positions.query.to(torch.float32)
            distance = (query.unsqueeze(-1) - positions.key.to(torch.float32)).abs_()
        distance = distance.unsqueeze(0) if distance.dim() == 2 else distance
        return torch.mul(distance.unsqueeze(1), -self.slopes.view(1, -1, 1, 1)).to(dtype)

    def attend(self, query, key, positions, context):
        if positions.offset is None:
            memo_key = ("alibi", positions_key(positions), query.dtype)
            bias = context.memo(memo_key, lambda: self._bias(positions, query.dtype))
        else:  # a constant of the lengths: kept across forward passes
            bias = _cached(self, default_positions_key(positions, query), lambda: self._bias(positions, query.dtype))
        return AttentionTerms(query, key, bias=bias, shared_bias=True)
