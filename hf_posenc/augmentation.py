"""Position augmentation: train on short windows whose position ids reach a longer target length.

A model fine-tuned on 128-token inputs never sees a distance past 127, so at 2048 tokens it meets positions (learned
rows, relative distances, rotary angles) it was never trained on. Position augmentation trains on the same short
windows but hands the model position ids spread over `[0, target_length)`:

* `pose`: Positional Skip-wisE training (PoSE, Zhu et al. 2023, arXiv:2309.10400). The window is cut into
  `num_chunks` contiguous chunks of random lengths; chunk `i` is shifted by a skip `u_i`, with
  `0 = u_0 <= u_1 <= ... <= u_{k-1} <= target_length - length`, so positions stay increasing, runs of neighbours
  keep distance 1, and distances up to `target_length - 1` are exercised.
* `randomized`: randomized positional encodings (Ruoss et al. 2023, arXiv:2305.16843): a sorted random subset of
  `[0, target_length)` of size `length`.

The ids are *logical* positions, counted from 0 (BART adds its 2 special rows itself). RoBERTa-style models take
row ids instead, offset by `padding_idx + 1`: `PositionAugmentation.for_model` reads that offset from the model.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from .architectures import architecture_for

METHODS = ("pose", "randomized")
"""The position augmentation methods `sample_position_ids` knows."""

TEST_TIME_METHODS = ("randomized",)
"""The methods whose published form draws positions at test time too. Randomized positional encodings sample an
ordered subset of `[0, L)` at every forward pass, in training and evaluation alike (Ruoss et al. 2023, Section 3); PoSE
fine-tunes with skipped positions and then reads the full input with its plain positions (Zhu et al. 2023)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_count(name: str, value: Any, low: int) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r} of type {type(value).__name__}.")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
    return int(value)


def check_augmentation(length: int, target_length: int, method: str, num_chunks: int) -> None:
    """Validate the arguments of `sample_position_ids` (a `TypeError`/`ValueError` that names the fix)."""
    _check_count("length", length, 1)
    _check_count("target_length", target_length, 1)
    _check_count("num_chunks", num_chunks, 1)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"Unknown position augmentation method {method!r}; valid methods: {list(METHODS)}.")
    if target_length < length:
        raise ValueError(
            f"target_length ({target_length}) must be >= the input length ({length}): augmentation spreads the "
            f"positions of a short window over a longer range. Raise target_length or truncate the inputs."
        )


def sample_position_ids(
    batch_size: int,
    length: int,
    *,
    target_length: int,
    method: str = "pose",
    generator: torch.Generator | None = None,
    num_chunks: int = 2,
) -> torch.LongTensor:
    """Sample augmented position ids for a batch of `length`-token windows that stand for `target_length` tokens.

    Args:
        batch_size: rows to sample (each row gets its own ids).
        length: tokens per row.
        target_length: the length the model should learn to read; every id is in `[0, target_length)`.
        method: `"pose"` (PoSE, arXiv:2309.10400) or `"randomized"` (Ruoss et al., arXiv:2305.16843).
        generator: the random generator (CPU); None uses torch's global one.
        num_chunks: PoSE's number of chunks (at most `length` are used); ignored by `"randomized"`.

    Returns:
        A `(batch_size, length)` `torch.long` tensor of strictly increasing logical positions per row. At
        `target_length == length` both methods return `0..length-1`.

    Raises:
        TypeError / ValueError: a count that is not an int >= 1, an unknown `method`, `target_length < length`.

    Example:
        ```python
        >>> import torch
        >>> from hf_posenc.augmentation import sample_position_ids
        >>> ids = sample_position_ids(2, 8, target_length=64, generator=torch.Generator().manual_seed(0))
        >>> ids.shape, bool((ids.diff(dim=-1) > 0).all()), int(ids.max()) < 64
        (torch.Size([2, 8]), True, True)
        ```
    """
    _check_count("batch_size", batch_size, 1)
    check_augmentation(length, target_length, method, num_chunks)
    if method == "randomized":
        return _randomized(batch_size, length, target_length, generator)
    return _pose(batch_size, length, target_length, min(num_chunks, length), generator)


def _randomized(batch_size: int, length: int, target_length: int, generator: torch.Generator | None) -> torch.Tensor:
    """A uniformly random `length`-subset of `[0, target_length)` per row, sorted."""
    scores = torch.rand(batch_size, target_length, generator=generator)
    return scores.argsort(dim=-1)[:, :length].sort(dim=-1).values


def _pose(
    batch_size: int, length: int, target_length: int, num_chunks: int, generator: torch.Generator | None
) -> torch.Tensor:
    """PoSE: chunk boundaries are `num_chunks - 1` distinct cuts in `[1, length)`; the skips are sorted uniform draws
    from `[0, target_length - length]` (the first chunk starts at 0), so the last id is `< target_length`."""
    arange = torch.arange(length)
    cuts = torch.rand(batch_size, length - 1, generator=generator).argsort(dim=-1)[:, : num_chunks - 1] + 1
    cuts = cuts.sort(dim=-1).values
    skips = torch.randint(0, target_length - length + 1, (batch_size, num_chunks - 1), generator=generator)
    skips = torch.cat([torch.zeros(batch_size, 1, dtype=torch.long), skips.sort(dim=-1).values], dim=-1)
    chunk = torch.searchsorted(cuts, arange.expand(batch_size, -1).contiguous(), right=True)
    return arange + skips.gather(-1, chunk)


class PositionAugmentation:
    """A data collator wrapper that adds augmented `position_ids` to every batch.

    Usable as a HF `Trainer` `data_collator` or a `DataLoader` `collate_fn`. A batch's ids are drawn with a generator
    seeded by `(seed, epoch, the batch's tensors)`: they depend on the batch alone, not on the batches before it, so a
    run is repeatable, a resumed run (which skips the batches already seen) draws exactly the ids of an uninterrupted
    one, and `DataLoader` workers need no streams of their own. Two equal batches of one epoch get equal ids;
    `set_epoch` (the recipes' training loop calls it at every epoch, as for a sampler) draws new ones.

    Args:
        target_length: the length the model should learn to read (every logical id is `< target_length`).
        method: `"pose"` or `"randomized"` (see `sample_position_ids`).
        seed: seed of the sampling generator.
        collator: the collator to wrap (e.g. `DataCollatorWithPadding(tokenizer)`); None stacks features whose
            values already have equal lengths.
        num_chunks: PoSE's number of chunks.
        offset: added to every id: the rows the model's `position_ids` keep before position 0 (RoBERTa: `padding_idx
            + 1`; BERT, BART: 0). `for_model` reads it from the model.

    Raises:
        TypeError / ValueError: bad `target_length`, `method`, `num_chunks`, `seed` or `offset` (at construction);
            a batch longer than `target_length`, or one that already has `position_ids` (at call time).

    Example:
        ```python
        >>> from hf_posenc.augmentation import PositionAugmentation
        >>> collate = PositionAugmentation(target_length=512, seed=0)
        >>> batch = collate([{"input_ids": [101, 7, 8, 102]}, {"input_ids": [101, 9, 10, 102]}])
        >>> batch["position_ids"].shape
        torch.Size([2, 4])
        ```
    """

    def __init__(
        self,
        target_length: int,
        method: str = "pose",
        seed: int = 0,
        collator: Callable[[list], Mapping[str, Any]] | None = None,
        *,
        num_chunks: int = 2,
        offset: int = 0,
    ) -> None:
        check_augmentation(1, target_length, method, num_chunks)
        _check_count("seed", seed, 0)
        _check_count("offset", offset, 0)
        if collator is not None and not callable(collator):
            raise TypeError(f"collator must be callable (a data collator) or None, got {type(collator).__name__}.")
        self.target_length, self.method, self.seed, self.collator = int(target_length), method, int(seed), collator
        self.num_chunks, self.offset = int(num_chunks), int(offset)
        self.epoch = 0

    @classmethod
    def for_model(cls, model: nn.Module, target_length: int, method: str = "pose", seed: int = 0, **kwargs):
        """A `PositionAugmentation` whose `offset` matches `model`'s `position_ids` convention (RoBERTa: rows)."""
        stack = architecture_for(model).stacks[0]
        offset = stack.offset(model.config) if stack.table_call == "position_ids" else 0
        return cls(target_length, method, seed, offset=offset, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Draw the ids of epoch `epoch` (with DataLoader workers: call it before the epoch's iterator is made)."""
        _check_count("epoch", epoch, 0)
        self.epoch = int(epoch)

    def _generator(self, batch: Mapping[str, Any]) -> torch.Generator:
        """A generator seeded by the seed, the epoch and every tensor of the batch (names, shapes and values)."""
        digest = hashlib.blake2b(f"{self.seed}:{self.epoch}".encode(), digest_size=8)
        for name in sorted(k for k, v in batch.items() if isinstance(v, torch.Tensor)):
            tensor = batch[name].detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = dict(self.collator(list(features)) if self.collator is not None else _stack(features))
        if "position_ids" in batch:
            raise ValueError(
                "The batch already has position_ids; PositionAugmentation would overwrite them. Drop them from the "
                "features (or the wrapped collator) and let PositionAugmentation set them."
            )
        reference = batch.get("input_ids", batch.get("attention_mask"))
        if not isinstance(reference, torch.Tensor) or reference.dim() != 2:
            raise ValueError("PositionAugmentation needs a (batch, length) `input_ids` or `attention_mask` tensor.")
        batch_size, length = reference.shape
        generator = self._generator(batch)
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.shape == reference.shape and not bool(mask.all()):
            ids = self._per_row(mask.detach().cpu().bool(), generator)
        else:
            ids = self._sample(batch_size, length, generator)
        batch["position_ids"] = (ids + self.offset).to(reference.device)
        return batch

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
        return sample_position_ids(
            batch_size,
            length,
            target_length=self.target_length,
            method=self.method,
            generator=generator,
            num_chunks=self.num_chunks,
        )

    def _per_row(self, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A padded batch: each row's real tokens get the ids of an input of their own length (a shorter input is
        spread over the whole target range too, not over the first ids of a longer draw); padding gets id 0."""
        ids = torch.zeros(mask.shape, dtype=torch.long)
        for row, real in enumerate(mask):
            count = int(real.sum())
            if count:
                ids[row, real] = self._sample(1, count, generator)[0]
        return ids

    def __repr__(self) -> str:
        return (
            f"PositionAugmentation(target_length={self.target_length}, method={self.method!r}, seed={self.seed}, "
            f"num_chunks={self.num_chunks}, offset={self.offset}, collator={self.collator!r})"
        )


def _stack(features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate features whose values have equal lengths (lists, tensors or scalars) into tensors."""
    if not features:
        raise ValueError("PositionAugmentation got an empty list of features.")
    return {key: default_collate([torch.as_tensor(f[key]) for f in features]) for key in features[0]}
