"""Rotary position embeddings (Su et al. 2021), with linear, NTK-aware and YaRN scaling."""

from __future__ import annotations

import math

import torch

from ..option_checks import check_choice, check_finite_float, check_optional_int
from .base import (
    MAX_BASE,
    MAX_POSITIONS,
    AttentionTerms,
    PositionContext,
    Positions,
    RelativeEncoding,
    StackDims,
    positions_key,
    register_encoding,
    require,
)

ROPE_SCALINGS = (None, "linear", "ntk", "yarn")


def _yarn_inv_freq(inv_freq: torch.Tensor, factor: float, original_max_length: int, dim: int, base: float):
    """YaRN (Peng et al. 2023): interpolate low frequencies, keep high ones, blend linearly in between
    (beta_fast=32, beta_slow=1), as transformers' `_compute_yarn_parameters`."""

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original_max_length / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(32)), 0)
    high = min(math.ceil(correction_dim(1)), dim - 1)
    ramp = (torch.arange(dim // 2, dtype=torch.float32) - low) / max(high - low, 1e-3)
    extrapolation_weight = 1 - ramp.clamp(0, 1)
    return inv_freq / factor * (1 - extrapolation_weight) + inv_freq * extrapolation_weight


@register_encoding("rope")
class RotaryEncoding(RelativeEncoding):
    """Rotary position embedding (Su et al. 2021) of queries and keys, in transformers' rotate-half layout.

    Scaling for lengths past the trained one: `linear` position interpolation (Chen et al. 2023), `ntk` (NTK-aware
    base change, bloc97 2023), `yarn` (Peng et al. 2023, with its attention temperature). `original_max_length`
    defaults to the model's `max_position_embeddings`.
    """

    citation = "Su et al. 2021, RoFormer: Enhanced Transformer with Rotary Position Embedding (arXiv:2104.09864)"
    step0 = "rotates queries and keys: pretrained attention patterns are disturbed until fine-tuning adapts"

    def __init__(
        self,
        dims: StackDims,
        *,
        base: float = 10000.0,
        scaling: str | None = None,
        factor: float = 1.0,
        original_max_length: int | None = None,
    ) -> None:
        super().__init__(dims)
        require(dims.head_dim % 2 == 0, f"rope needs an even head_dim, got {dims.head_dim}.")
        name = self.name
        self.base = check_finite_float(name, "base", base, low=1.0, high=MAX_BASE, low_open=True)
        self.scaling = check_choice(name, "scaling", scaling, ROPE_SCALINGS)
        # 1e6 times the trained length is past any real context, and NTK's factor ** (dim / (dim - 2)) stays a float.
        self.factor = check_finite_float(name, "factor", factor, low=1.0, high=1e6)
        require(scaling is None or self.factor > 1, f"scaling={scaling!r} needs factor > 1, got {factor!r}.")
        require(scaling != "ntk" or dims.head_dim > 2, f"scaling='ntk' needs a head_dim > 2, got {dims.head_dim}.")
        original_max_length = check_optional_int(
            name, "original_max_length", original_max_length, low=1, high=MAX_POSITIONS
        )
        self.original_max_length = dims.max_length if original_max_length is None else original_max_length
        self.attention_factor = self._inv_freq()[1]
        self._register_derived_tables()

    def derived_tables(self) -> dict[str, torch.Tensor]:
        return {"inv_freq": self._inv_freq()[0]}

    def _inv_freq(self) -> tuple[torch.Tensor, float]:
        dim, base = self.dims.head_dim, self.base
        if self.scaling == "ntk":
            base = base * self.factor ** (dim / (dim - 2))
        inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        if self.scaling == "linear":
            return inv_freq / self.factor, 1.0
        if self.scaling == "yarn":
            inv_freq = _yarn_inv_freq(inv_freq, self.factor, self.original_max_length, dim, base)
            return inv_freq, 0.1 * math.log(self.factor) + 1.0
        return inv_freq, 1.0

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., L, head_dim) cos and sin tables for `positions` (..., L), in fp32 and cast at the end."""
        angles = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        return (angles.cos() * self.attention_factor).to(dtype), (angles.sin() * self.attention_factor).to(dtype)

    def _tables(self, positions: Positions, dtype: torch.dtype, context: PositionContext):
        def compute():
            def shaped(p):  # (L,) -> (1, 1, L, D); (B, L) -> (B, 1, L, D)
                cos, sin = self.cos_sin(p, dtype)
                return (cos, sin) if p.dim() == 1 else (cos.unsqueeze(1), sin.unsqueeze(1))

            return shaped(positions.query), shaped(positions.key)

        return context.memo(("rope", positions_key(positions), dtype), compute)

    def attend(self, query, key, positions, context):
        (q_cos, q_sin), (k_cos, k_sin) = self._tables(positions, query.dtype, context)
        return AttentionTerms(rotate(query, q_cos, q_sin), rotate(key, k_cos, k_sin))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply the rotary rotation in rotate-half layout: `x * cos + rotate_half(x) * sin`."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
