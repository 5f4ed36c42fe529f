"""Absolute encodings, added to the token embeddings: the checkpoint's learned table (and the inits of its new rows
when it grows), fixed sinusoids, and none (causal decoders)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..option_checks import check_choice, check_finite_float, check_optional_int
from .base import MAX_BASE, MAX_POSITIONS, PositionEncoding, StackDims, register_encoding, require, sinusoid_table

# Inits of the new rows when a learned table grows: (trained rows (T, D), new length N) -> (N, D), in the table's
# dtype. They are the `init` option of `learned`, so they live beside it; `hf_posenc.extension` applies them.


def copy_rows(trained: torch.Tensor, length: int) -> torch.Tensor:
    """Tile the trained rows: position `p` gets row `p mod T` (Beltagy et al. 2020, Longformer, arXiv:2004.05150).

    Longformer extended RoBERTa from 512 to 4096 positions this way and reports the copy init as crucial: attention
    heads keep their strong local position patterns, so fine-tuning converges much faster than from random rows.
    The trained rows are kept untouched.
    """
    index = torch.arange(trained.shape[0], length, device=trained.device) % trained.shape[0]
    return torch.cat([trained, trained[index]])


def interpolate_rows(trained: torch.Tensor, length: int) -> torch.Tensor:
    """Linear interpolation of the whole table onto `length` positions (position interpolation, Chen et al. 2023,
    arXiv:2306.15595; LongEmbed applies it to absolute tables). The first and last rows are kept (align_corners);
    every other row moves, so even short inputs change: the model sees positions at a finer spacing."""
    grid = trained.float().T.unsqueeze(0)  # (1, D, T)
    stretched = nn.functional.interpolate(grid, size=length, mode="linear", align_corners=True)
    return stretched[0].T.to(trained.dtype)


def sinusoidal_rows(trained: torch.Tensor, length: int) -> torch.Tensor:
    """New rows from the sinusoids of Vaswani et al. 2017 (arXiv:1706.03762), scaled to the trained table.

    Each dimension gets the trained rows' mean and standard deviation (`mean_d + std_d * sqrt(2) * sin/cos(...)`,
    the sinusoids having a standard deviation of about 1/sqrt(2)), so the embedding LayerNorm sees vectors of the size
    it was trained on. The trained rows are kept untouched.
    """
    stats = trained.float()
    mean, std = stats.mean(0), stats.std(0, unbiased=False)
    positions = torch.arange(trained.shape[0], length, device=trained.device)
    waves = sinusoid_table(positions, trained.shape[1]) * 2**0.5
    return torch.cat([trained, (mean + std * waves).to(trained.dtype)])


def random_rows(trained: torch.Tensor, length: int) -> torch.Tensor:
    """New rows drawn from `N(0, s^2)`, `s` the standard deviation of the trained rows: the weak baseline (Longformer
    compares against it). Uses torch's global generator: seed it with `torch.manual_seed` to reproduce."""
    std = trained.float().std().item()
    fresh = torch.randn(length - trained.shape[0], trained.shape[1], device=trained.device) * std
    return torch.cat([trained, fresh.to(trained.dtype)])


EXTENSION_INITS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "copy": copy_rows,
    "interpolate": interpolate_rows,
    "sinusoidal": sinusoidal_rows,
    "random": random_rows,
}
"""How `extend_positions` fills new rows of a learned table: init name -> function (the `init` option of `learned`)."""

# Inference-time position maps of the learned table (length extension without new rows).
POSITION_ID_MAPS = ("recurrent", "grouped")
"""LongEmbed's position maps into the trained rows (implemented in `hf_posenc.state.PositionMap`)."""


@register_encoding("learned")
class LearnedAbsolute(PositionEncoding):
    """The checkpoint's own learned absolute table, left in place (the identity patch; the base for extension).

    `init` only matters when `max_length` grows the table (see `hf_posenc.extend_positions`). `position_ids`
    ("recurrent": `p mod T`, "grouped": `p // group_size`) instead maps positions past the trained length `T` into the
    trained rows at inference time, with no new rows (LongEmbed, Zhu et al. 2024); it needs `max_length`, and
    `group_size` defaults to `ceil(max_length / T)`.
    """

    kind = "absolute"
    learned = True
    max_length_bound = True
    keeps_learned_table = True
    citation = "Devlin et al. 2019, BERT (arXiv:1810.04805)"
    step0 = "identity: outputs are bit-identical to the unpatched model"

    def __init__(
        self, dims: StackDims, *, init: str = "copy", position_ids: str | None = None, group_size: int | None = None
    ) -> None:
        super().__init__(dims)
        init = check_choice(self.name, "init", init, EXTENSION_INITS)
        # Position maps (LongEmbed): past the trained length, positions map into the trained rows.
        position_ids = check_choice(self.name, "position_ids", position_ids, POSITION_ID_MAPS, optional=True)
        group_size = check_optional_int(self.name, "group_size", group_size, low=2, high=MAX_POSITIONS)
        require(group_size is None or position_ids == "grouped", "group_size only applies to position_ids='grouped'.")
        self.position_ids, self.group_size = position_ids, group_size
        self.init = init


@register_encoding("sinusoidal")
class SinusoidalAbsolute(PositionEncoding):
    """Fixed sinusoids of Vaswani et al. 2017 added to the token embeddings; no parameters, any length.

    `scale` multiplies the table. The default `"auto"` is resolved at patch time to the standard deviation of the
    learned table it replaces divided by the sinusoids' own (1/sqrt(2)), so the embedding LayerNorm sees inputs of the
    size it was trained on; without a table to match it resolves to 1.0.
    """

    kind = "absolute"
    citation = "Vaswani et al. 2017, Attention Is All You Need (arXiv:1706.03762)"
    step0 = "replaces the learned table by sinusoids of the same scale: order must be re-learned in fine-tuning"

    def __init__(self, dims: StackDims, *, base: float = 10000.0, scale: float | str = "auto") -> None:
        super().__init__(dims)
        self.base = check_finite_float(self.name, "base", base, low=1.0, high=MAX_BASE, low_open=True)
        # The table is added to token embeddings of order one: a scale past 100 would drown them.
        if not (isinstance(scale, str) and scale == "auto"):
            scale = check_finite_float(self.name, "scale", scale, low=0.0, high=100.0, low_open=True)
        self.scale = scale

    @classmethod
    def resolve_options(
        cls, options: dict[str, Any], table: torch.Tensor | None, keep_absolute: bool
    ) -> dict[str, Any]:
        """`scale="auto"`: the learned table's standard deviation over the sinusoids' own (1/sqrt(2))."""
        resolved = dict(options)
        if resolved.get("scale", "auto") == "auto":
            learned_std = table.detach().float().std().item() if table is not None else None
            resolved["scale"] = learned_std * 2**0.5 if learned_std else 1.0
        return resolved

    def embed(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Vectors for `position_ids` (any shape), fp32, shape `(*position_ids.shape, hidden_size)`."""
        scale = 1.0 if self.scale == "auto" else self.scale
        return sinusoid_table(position_ids, self.dims.hidden_size, self.base) * scale


@register_encoding("none")
class NoPosition(PositionEncoding):
    """No position information at all (Kazemnejad et al. 2023, NoPE). Causal decoders only.

    A causal mask already breaks permutation symmetry, so a decoder can infer positions; a bidirectional encoder
    without positions is a bag of words, so `none` is refused there.
    """

    kind = "none"
    citation = "Kazemnejad et al. 2023, The Impact of Positional Encoding on Length Generalization (arXiv:2305.19466)"
    step0 = "removes the learned table: the decoder must re-learn order from causality"
