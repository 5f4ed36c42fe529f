"""Relative encodings with a table per distance or bucket: Shaw et al. 2018 keys, Huang et al. 2020 keys and
queries, NEZHA's functional relative positions, and T5's bucketed bias."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from .. import relative_terms as terms
from ..blockwise import BandedValue, RowTerms
from ..option_checks import check_int, check_optional_int
from .base import (
    MAX_POSITIONS,
    AttentionTerms,
    PositionContext,
    Positions,
    RelativeEncoding,
    StackDims,
    check_init,
    default_positions_key,
    init_table,
    positions_key,
    register_encoding,
    sinusoid_table,
)


def _clipped_index(positions: Positions, max_distance: int, context: PositionContext) -> torch.Tensor:
    """`clip(i - j, -k, k) + k`, shape (Q, K) or (B, Q, K), shared by every layer of the forward pass."""

    def compute() -> torch.Tensor:
        return positions.relative().clamp(-max_distance, max_distance) + max_distance

    return context.memo(("clipped_index", max_distance, positions_key(positions)), compute)


def _window(positions: Positions, key: torch.Tensor, max_distance: int) -> dict[str, int] | None:
    """The static arguments of the window forms for default positions; None for explicit positions (gather forms)."""
    if positions.offset is None:
        return None
    return {"max_distance": max_distance, "k_len": key.shape[-2], "offset": positions.offset}


@register_encoding("relative_key")
class ShawRelativeKey(RelativeEncoding):
    """Shaw et al. 2018 relative keys, as BERT's former `position_embedding_type="relative_key"`.

    A learned vector `r_d` per clipped distance `d = clip(i - j, -max_distance, max_distance)`, one table per layer;
    the score gains `q_i . r_d` (before the 1/sqrt(head_dim) scaling, as in BERT). The default `max_distance` is the
    model's `max_position_embeddings - 1`, which is BERT's table of `2 * max_position_embeddings - 1` rows.
    """

    learned = True
    per_layer = True
    citation = "Shaw et al. 2018, Self-Attention with Relative Position Representations (arXiv:1803.02155)"
    step0 = "adds q.r terms (random unless init='zeros'); the absolute table is dropped unless keep_absolute=True"

    def __init__(self, dims: StackDims, *, max_distance: int | None = None, init: str = "auto") -> None:
        super().__init__(dims)
        max_distance = check_optional_int(self.name, "max_distance", max_distance, low=1, high=MAX_POSITIONS)
        max_distance = dims.max_length - 1 if max_distance is None else max_distance
        self.max_distance, self.init = max_distance, check_init(self.name, init)
        self.distance_embedding = nn.Embedding(2 * max_distance + 1, dims.head_dim)
        self.reset_parameters(init)

    def reset_parameters(self, init: str) -> None:
        init_table(self.distance_embedding.weight, "normal" if init == "auto" else init, self.dims.initializer_range)

    def attend(self, query, key, positions, context):
        table, window = self.distance_embedding.weight, _window(positions, key, self.max_distance)
        if window is not None:
            bias = partial(terms.window_distance_bias, **window)
            return AttentionTerms(query, key, rows=RowTerms(inputs=(table,), bias=bias, max_rows=terms.WINDOW_ROWS))
        index = _clipped_index(positions, self.max_distance, context)
        return AttentionTerms(query, key, rows=RowTerms(inputs=(table, index), bias=terms.query_distance_bias))


@register_encoding("relative_key_query")
class HuangRelativeKeyQuery(ShawRelativeKey):
    """Huang et al. 2020 (method 4), as BERT's former `relative_key_query`: the score gains `q_i . r_d + k_j . r_d`."""

    citation = (
        "Huang et al. 2020, Improve Transformer Models with Better Relative Position Embeddings (arXiv:2009.13658)"
    )
    step0 = "adds q.r + k.r terms (random unless init='zeros'); absolute table dropped unless keep_absolute=True"

    def attend(self, query, key, positions, context):
        table, window = self.distance_embedding.weight, _window(positions, key, self.max_distance)
        if window is not None:
            bias = partial(terms.window_query_key_bias, **window)
            rows = RowTerms(inputs=(table,), prepare=terms.key_state, bias=bias, max_rows=terms.WINDOW_ROWS)
            return AttentionTerms(query, key, rows=rows)
        index = _clipped_index(positions, self.max_distance, context)
        rows = RowTerms(inputs=(table, index), prepare=terms.key_distance_scores, bias=terms.query_key_distance_bias)
        return AttentionTerms(query, key, rows=rows)


@register_encoding("nezha")
class NezhaFunctionalRelative(RelativeEncoding):
    """NEZHA's functional relative encoding (Wei et al. 2019): fixed sinusoids of the clipped distance on keys and
    values; no parameters.

    As in NEZHA's code, the distance is `d = clip(j - i, -k, k)` and the vector is the sinusoid of row `d + k` of a
    `(2k + 1, head_dim)` table; the score gains `q_i . r_d` (before scaling) and the output gains
    `sum_j p_ij r_d`. The value term needs the attention probabilities, so this encoding runs attention explicitly.
    """

    citation = (
        "Wei et al. 2019, NEZHA: Neural Contextualized Representation for Chinese Language Understanding "
        "(arXiv:1909.00204)"
    )
    step0 = "adds fixed q.r and p.r terms; the absolute table is dropped unless keep_absolute=True"

    def __init__(self, dims: StackDims, *, max_distance: int = 64) -> None:
        super().__init__(dims)
        self.max_distance = check_int(self.name, "max_distance", max_distance, low=1, high=MAX_POSITIONS)
        self._register_derived_tables()

    def derived_tables(self) -> dict[str, torch.Tensor]:
        return {"table": sinusoid_table(torch.arange(2 * self.max_distance + 1), self.dims.head_dim)}

    def attend(self, query, key, positions, context):
        # NEZHA indexes by j - i, the opposite sign of BERT's relative_key: flip the table (or the index).
        k, window = self.max_distance, _window(positions, key, self.max_distance)
        if window is not None:
            flipped = self.table.flip(0)
            bias, value = partial(terms.window_distance_bias, **window), partial(terms.window_value_term, **window)
            banded = BandedValue(partial(terms.band_columns, **window), partial(terms.banded_value_term, **window))
            band_rows = max(32, 1 << (2 * k - 1).bit_length())  # about the band's own width, 2k
            rows = RowTerms(inputs=(flipped,), bias=bias, value=value, banded_value=banded, max_rows=band_rows)
            return AttentionTerms(query, key, rows=rows)
        index = context.memo(
            ("nezha_index", k, positions_key(positions)), lambda: 2 * k - _clipped_index(positions, k, context)
        )
        rows = RowTerms(inputs=(self.table, index), bias=terms.query_distance_bias, value=terms.distance_value_term)
        return AttentionTerms(query, key, rows=rows)


def t5_relative_buckets(
    relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket of each `relative = key - query` distance (Raffel et al. 2020; transformers' T5Attention).

    Half the buckets are exact small distances, the rest logarithmically larger ones up to `max_distance`; in
    bidirectional mode, half the buckets are for keys after the query.
    """
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    log_ratio = torch.log(relative.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + log_ratio * (num_buckets - max_exact)).long().clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, relative, large)


@register_encoding("t5")
class T5RelativeBias(RelativeEncoding):
    """T5's bucketed relative bias: a learned scalar per head and bucket, shared by the layers of a stack.

    Buckets are bidirectional in encoders and causal in decoders. The bias is computed once per forward pass.
    """

    learned = True
    citation = "Raffel et al. 2020, Exploring the Limits of Transfer Learning with T5 (arXiv:1910.10683)"
    step0 = "adds a learned per-head bias (random unless init='zeros'); absolute table dropped unless keep_absolute"

    def __init__(self, dims: StackDims, *, num_buckets: int = 32, max_distance: int = 128, init: str = "auto") -> None:
        super().__init__(dims)
        # Half the buckets (a quarter in encoders) are exact distances; the log-spaced rest need max_distance past
        # them.
        num_buckets = check_int(self.name, "num_buckets", num_buckets, low=4, high=MAX_POSITIONS)
        max_distance = check_int(self.name, "max_distance", max_distance, low=num_buckets // 2 + 1, high=MAX_POSITIONS)
        self.num_buckets, self.max_distance, self.init = num_buckets, max_distance, check_init(self.name, init)
        self.relative_attention_bias = nn.Embedding(num_buckets, dims.num_heads)
        self.reset_parameters(init)

    def reset_parameters(self, init: str) -> None:
        init_table(
            self.relative_attention_bias.weight, "normal" if init == "auto" else init, self.dims.initializer_range
        )

    def _buckets(self, relative: torch.Tensor) -> torch.Tensor:
        """The bucket of each signed distance `i - j` (T5's convention is key - query, hence the minus)."""
        return t5_relative_buckets(-relative, not self.dims.causal, self.num_buckets, self.max_distance)

    def _bias(self, positions: Positions, dtype: torch.dtype) -> torch.Tensor:
        """The whole (1 | B, H, Q, K) bias, contiguous (the fused kernel would copy a strided one in every layer)."""
        if positions.offset is None:
            return terms.heads_first(self.relative_attention_bias(self._buckets(positions.relative()))).to(dtype)
        q_len, k_len = positions.query.shape[-1], positions.key.shape[-1]
        distances = terms.descending_distances(q_len, k_len, positions.offset, positions.key.device)
        per_distance = self.relative_attention_bias(self._buckets(distances)).T  # (H, Q + K - 1), one per distance
        return terms.toeplitz_rows(per_distance, slice(0, q_len), q_len, k_len).unsqueeze(0).to(dtype).contiguous()

    def attend(self, query, key, positions, context):
        # The whole bias is computed once per forward pass and without gradients: the backend uses it when nothing is
        # differentiated, and for the forward blocks otherwise. Gradients come from `bias` rows recomputed block by
        # block in backward. It is never kept across passes: no key proves the weights unchanged (fused optimizers,
        # `.data` edits and dtype round trips change them without bumping `weight._version`).
        weight = self.relative_attention_bias.weight
        with torch.no_grad():
            if positions.offset is None:
                memo_key = ("t5", positions_key(positions), query.dtype)
            else:
                memo_key = ("t5_default", *default_positions_key(positions, query))
            bias = context.memo(memo_key, lambda: self._bias(positions, query.dtype))
        return AttentionTerms(
            query, key, bias=bias, shared_bias=True, rows=self._rows(weight, positions, bias, context)
        )

    def _rows(self, weight, positions: Positions, bias: torch.Tensor, context: PositionContext) -> RowTerms:
        if positions.offset is None:
            buckets = context.memo(
                ("t5_buckets", positions_key(positions)), lambda: self._buckets(positions.relative())
            )
            return RowTerms(inputs=(weight, buckets), bias=terms.bucket_bias, forward_bias=bias)
        q_len, k_len = positions.query.shape[-1], positions.key.shape[-1]
        distances = terms.descending_distances(q_len, k_len, positions.offset, positions.key.device)
        buckets = context.memo(
            ("t5_distance_buckets", q_len, k_len, positions.offset), lambda: self._buckets(distances)
        )
        toeplitz = partial(terms.toeplitz_bias, q_len=q_len, k_len=k_len)
        return RowTerms(inputs=(weight, buckets), prepare=terms.bucket_values, bias=toeplitz, forward_bias=bias)
