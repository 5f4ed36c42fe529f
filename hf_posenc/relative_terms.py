"""The relative encodings' terms, computed one block of query rows at a time (see `hf_posenc.blockwise.RowTerms`).

The backend evaluates these functions block by block, so a (B, H, Q, K) bias never exists whole, and again in backward
for the gradients (O(L) memory per head). They compute in fp32 whatever the model's dtype; the backend casts the
bias once, for the kernel. Two forms:

* window forms, for default positions (query row i at position offset + i, key column j at j): a block's terms depend
  on its few distinct distances `i - j`, computed once and shifted into place by `skew` (the relative-to-absolute trick
  of Huang et al. 2018, Music Transformer), with constant columns where the distance is clipped;
* gather forms, for explicit positions: scores per distance, gathered by a (Q, K) or (B, Q, K) index.

Only torch is imported here.
"""

from __future__ import annotations

import torch


def gather_distances(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, H, Q, R) scores per distance -> (B, H, Q, K) by `index` (Q, K) or (B, Q, K), without an (L, L, D) tensor."""
    index = index if index.dim() == 2 else index.unsqueeze(1)
    return torch.gather(scores, -1, index.expand(*scores.shape[:-1], index.shape[-1]))


def gather_key_distances(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, H, K, R) key scores per distance -> (B, H, Q, K) with `out[i, j] = scores[j, index[i, j]]`."""
    index = index if index.dim() == 2 else index.unsqueeze(1)
    transposed = scores.transpose(-1, -2)  # (B, H, R, K)
    return torch.gather(transposed, -2, index.expand(*scores.shape[:-2], *index.shape[-2:]))


WINDOW_ROWS = 128
"""Query rows per forward block of the window forms: a block of r rows computes scores for about r + w distances."""


def window_distance_bias(rows: slice, query_rows, table: torch.Tensor, *, max_distance: int, k_len: int, offset: int):
    """`q_i . table[clip(i - j, -k, k) + k]` scaled by 1/sqrt(D), for default positions, without an index tensor.

    The scores of the block's distinct distances are shifted into place by `skew` (the relative-to-absolute trick of
    Huang et al. 2018, Music Transformer): one (r, r + w - 1) matmul instead of an (r, R) matmul and an (r, K) gather.
    When the band of unclipped distances spans most keys, the scores of all r + K - 1 distances are computed and the
    bias is a strided view, which SDPA's fused kernel reads as it is. Otherwise keys farther than k from every query
    of the block, whose clipped vector is one constant, get one score per row, and the band is copied in between.
    """
    lo, hi = band_columns(rows, max_distance=max_distance, k_len=k_len, offset=offset)
    full = 2 * (hi - lo) >= k_len
    lo, hi, distance_rows = _distance_window(rows, k_len, offset, max_distance, table.device, full=full)
    before, band, after = _query_window_terms(query_rows, table.float(), lo, hi, distance_rows, max_distance)
    if lo == 0 and hi == k_len:
        return band
    rows_shape = band.shape[:-1]
    return torch.cat([before.expand(*rows_shape, lo), band, after.expand(*rows_shape, k_len - hi)], dim=-1)


def window_query_key_bias(rows: slice, query_rows, table, key, *, max_distance: int, k_len: int, offset: int):
    """Huang et al.: `(q_i + k_j) . table[clip(i - j, -k, k) + k]` scaled by 1/sqrt(D), for default positions.

    The query term as in `window_distance_bias`; the key term of the band by `_key_band`.
    """
    lo, hi, distance_rows = _distance_window(rows, k_len, offset, max_distance, table.device)
    table = table.float()
    before, band, after = _query_window_terms(query_rows, table, lo, hi, distance_rows, max_distance)
    key = key.float() * key.shape[-1] ** -0.5
    key_band = _key_band(key[..., lo:hi, :], table[distance_rows], band.shape[-2])
    key_before = torch.matmul(key[..., :lo, :], table[2 * max_distance]).unsqueeze(-2)  # (B, H, 1, lo)
    key_after = torch.matmul(key[..., hi:, :], table[0]).unsqueeze(-2)
    return torch.cat([before + key_before, band + key_band, after + key_after], dim=-1)


def _key_band(keys: torch.Tensor, distance_table: torch.Tensor, rows: int) -> torch.Tensor:
    """`out[i, j] = k_j . distance_table[rows - 1 - i + j]`, (B, H, rows, w) for the w band keys (B, H, w, D).

    Key j meets the `rows` consecutive distances starting at row j of the table. Keys are taken in chunks of s: a
    chunk's keys meet s + rows - 1 consecutive distances, one (s, s + rows - 1) product per chunk ((s + rows - 1) /
    rows times the scores needed, against (w + rows) / rows for one product over all the band's distances), lined up
    by `skew`.
    """
    (batch, heads, width, dim), size = keys.shape, max(min(rows // 4, 32), 1)
    chunks = -(-width // size)
    keys = torch.nn.functional.pad(keys, (0, 0, 0, chunks * size - width)).unflatten(-2, (chunks, size))
    keys = keys.permute(2, 0, 1, 3, 4).reshape(chunks, batch * heads * size, dim)  # chunks first: one bmm
    starts = torch.arange(chunks, device=keys.device).unsqueeze(-1) * size
    index = starts + torch.arange(size + rows - 2, -1, -1, device=keys.device)  # descending: skew wants it so
    windows = distance_table[index.clamp(max=distance_table.shape[0] - 1)]  # (chunks, size + rows - 1, D)
    scores = torch.bmm(keys, windows.transpose(-1, -2)).view(chunks, batch, heads, size, size + rows - 1)
    per_key = skew(scores, rows)  # (chunks, B, H, key u, query i)
    return per_key.permute(1, 2, 4, 0, 3).reshape(batch, heads, rows, chunks * size)[..., :width]


def _query_window_terms(query_rows, table, lo: int, hi: int, distance_rows, max_distance: int):
    """The query term's parts: the score of the clipped vector before the band (B, H, r, 1), the band (B, H, r, w)
    and after it (B, H, r, 1); `table` in fp32."""
    query_rows = query_rows.float() * query_rows.shape[-1] ** -0.5
    scores = torch.matmul(query_rows, table[distance_rows].T)  # (B, H, r, r + w - 1)
    far = torch.matmul(query_rows, table[[2 * max_distance, 0]].T)  # keys far before (i - j > k) / after the block
    return far[..., :1], skew(scores, hi - lo), far[..., 1:]


def key_state(query, key, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return table, key


def window_value_term(rows: slice, probs, table: torch.Tensor, *, max_distance: int, k_len: int, offset: int):
    """`sum_j p_ij table[clip(i - j, -k, k) + k]` for default positions, from the full probabilities (B, H, r, K)."""
    lo, hi = band_columns(rows, k_len=k_len, offset=offset, max_distance=max_distance)
    outside = torch.stack((probs[..., :lo].sum(-1), probs[..., hi:].sum(-1)), dim=-1)
    window = {"max_distance": max_distance, "k_len": k_len, "offset": offset}
    return banded_value_term(rows, probs[..., lo:hi], outside, table, **window)


def banded_value_term(rows: slice, band_probs, outside, table, *, max_distance: int, k_len: int, offset: int):
    """The value term from the band's probabilities and the mass before / after the band (see `BandedValue`): the
    adjoint of `window_distance_bias`, probabilities summed per distance by `unskew`, then one matmul with the
    vectors of the distances."""
    lo, hi, distance_rows = _distance_window(rows, k_len, offset, max_distance, table.device)
    table = table.float()
    output = torch.matmul(unskew(band_probs, len(distance_rows)), table[distance_rows])  # (r, r + w - 1) @ (., D)
    return output + outside[..., :1] * table[2 * max_distance] + outside[..., 1:] * table[0]


def band_columns(rows: slice, *, max_distance: int, k_len: int, offset: int) -> tuple[int, int]:
    lo, hi, _ = _distance_window(rows, k_len, offset, max_distance, None, distances=False)
    return lo, hi


def _distance_window(rows: slice, k_len: int, offset: int, k: int, device, distances: bool = True, full: bool = False):
    """Columns [lo, hi) where some query of the block is within k of the key (all columns if `full`), and the table
    row of each distinct distance `i - j` there, from the largest (last query, column lo) to the smallest (first
    query, column hi - 1)."""
    first, last = offset + rows.start, offset + rows.stop - 1  # positions of the block's first and last query
    lo = 0 if full else min(max(first - k, 0), k_len)
    hi = k_len if full else max(min(last + k + 1, k_len), lo)
    if not distances:
        return lo, hi, None
    return lo, hi, torch.arange(last - lo, first - hi, -1, device=device).clamp(-k, k) + k


def skew(scores: torch.Tensor, width: int) -> torch.Tensor:
    """(..., r, r + w - 1) scores per distance (descending) -> (..., r, w) with `out[i, j] = scores[i, r - 1 - i + j]`.

    A view: row i of the result starts r - 1 - i elements into row i of `scores`, so the flat data read with a row
    stride of (r + w - 2) lines every row up.
    """
    r, total = scores.shape[-2:]
    if r == 1 or width == 0:
        return scores[..., :width]
    flat = scores.reshape(*scores.shape[:-2], r * total)
    return flat[..., r - 1 : r - 1 + r * (total - 1)].unflatten(-1, (r, total - 1))[..., :width]


def unskew(values: torch.Tensor, total: int) -> torch.Tensor:
    """The adjoint of `skew`: (..., r, w) -> (..., r, total) with `out[i, r - 1 - i + j] = values[i, j]`, zeros
    elsewhere (pad every row to total - 1, flatten, shift by r - 1)."""
    r, width = values.shape[-2:]
    if r == 1:
        return torch.nn.functional.pad(values, (0, total - width))
    padded = torch.nn.functional.pad(values, (0, total - 1 - width)).flatten(-2)
    return torch.nn.functional.pad(padded, (r - 1, 1)).unflatten(-1, (r, total))


def query_distance_bias(rows: slice, query_rows: torch.Tensor, table: torch.Tensor, index: torch.Tensor):
    """`q_i . table[index[i, j]]` scaled by 1/sqrt(D): (B, H, r, R) scores per distance, then gathered to (r, K)."""
    per_distance = torch.matmul(query_rows.float(), table.float().T)
    return gather_distances(per_distance, index[..., rows, :]) * query_rows.shape[-1] ** -0.5


def key_distance_scores(query, key, table: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Once per call: the (B, H, K, R) scores `k_j . table[r]` that every block of rows gathers from."""
    return table, index, torch.matmul(key.float(), table.float().T)


def query_key_distance_bias(rows: slice, query_rows, table, index, key_scores) -> torch.Tensor:
    """Huang et al. for explicit positions: the query term plus the key term gathered from per-distance key scores."""
    key_term = gather_key_distances(key_scores, index[..., rows, :]) * query_rows.shape[-1] ** -0.5
    return query_distance_bias(rows, query_rows, table, index) + key_term


def distance_value_term(rows: slice, probs: torch.Tensor, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`sum_j p_ij table[index[i, j]]`: probabilities summed per distance (a scatter-add into (B, H, r, R)), times the
    (R, D) table; never an (L, L, D) tensor."""
    index = index[..., rows, :]
    index = index if index.dim() == 2 else index.unsqueeze(1)
    per_distance = probs.new_zeros(*probs.shape[:-1], table.shape[0])
    per_distance = per_distance.scatter_add(-1, index.expand_as(probs), probs)
    return torch.matmul(per_distance, table.float())


def bucket_bias(rows: slice, query_rows, weight: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
    """T5: the learned (num_buckets, H) scalars of `buckets` (Q, K) or (B, Q, K), as (1 | B, H, r, K)."""
    return heads_first(torch.nn.functional.embedding(buckets[..., rows, :], weight.float()))


def heads_first(bias: torch.Tensor) -> torch.Tensor:
    """(Q, K, H) -> (1, H, Q, K); (B, Q, K, H) -> (B, H, Q, K)."""
    return bias.permute(2, 0, 1).unsqueeze(0) if bias.dim() == 3 else bias.permute(0, 3, 1, 2)


def descending_distances(q_len: int, k_len: int, offset: int, device) -> torch.Tensor:
    """Every distance `i - j` of default positions, from the largest (last query, first key) to the smallest."""
    return torch.arange(offset + q_len - 1, offset - k_len, -1, device=device)


def toeplitz_rows(per_distance: torch.Tensor, rows: slice, q_len: int, k_len: int) -> torch.Tensor:
    """Rows of a matrix that depends on `i - j` only: `out[..., i, j] = per_distance[..., q_len - 1 - i + j]` for the
    query rows `rows`, from values per distance in descending order (Q + K - 1 of them). Every row is a contiguous
    window of `per_distance` (`unfold`), taken in reverse order; the result is contiguous."""
    start = q_len - rows.stop
    windows = per_distance[..., start : start + (rows.stop - rows.start) + k_len - 1].unfold(-1, k_len, 1)
    return windows.flip(-2)


def bucket_values(query, key, weight: torch.Tensor, buckets: torch.Tensor) -> tuple[torch.Tensor]:
    """Once per call: T5's learned scalar of every distance, (H, Q + K - 1), in fp32."""
    return (torch.nn.functional.embedding(buckets, weight.float()).T,)


def toeplitz_bias(rows: slice, query_rows, per_distance: torch.Tensor, *, q_len: int, k_len: int) -> torch.Tensor:
    return toeplitz_rows(per_distance, rows, q_len, k_len).unsqueeze(0)
