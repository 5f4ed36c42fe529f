"""Bootstrap intervals, paired differences and reference comparisons for the length-generalization study.

The study trains every variant (an encoding or method) with several seeds and evaluates each run on the same test
documents at several lengths. Mean ± std over seeds on 100 documents cannot separate methods: the std ignores the
sampling noise of the test set, and two variants evaluated on the same documents are correlated, which an unpaired
comparison throws away. This module works on the per-document results instead:

- `cell_interval`: a percentile interval for one cell (variant x length), from a hierarchical bootstrap that resamples
  seeds with replacement and then documents with replacement, the same document indices for every seed within a
  replicate (all seeds read the same documents). With one seed it is the ordinary bootstrap over documents and
  `scipy.stats.bootstrap` does it.
- `paired_difference`: variant minus baseline on the same resampled documents (and the same resampled seeds when the
  two sides were trained with the same seeds), with its interval, whether the interval excludes zero, and a two-sided
  bootstrap p-value.
- `compare_tables`: a fresh study against a committed reference, cell by cell: agree exactly, agree within noise, or
  differ, with a one-paragraph Markdown summary.
- `markdown_interval_table`, `markdown_difference_table`, `plot_intervals`, `plot_interval_panels` (small multiples
  for many rows), `plot_differences` (a forest plot of paired differences): rendering.

Per-document data of one cell is either an array of per-document values (0/1 correctness, or any per-document score)
of shape `(n_docs,)` for one run or `(n_seeds, n_docs)` for several, or a `(predictions, labels)` tuple, predictions
of the same shapes and labels `(n_docs,)` (shared by all seeds) or `(n_seeds, n_docs)`. Metric `"accuracy"` is the
mean of the per-document values (accuracy for 0/1 correctness, the mean score otherwise; pairs are turned into
correctness); `"macro_f1"` needs pairs and matches `sklearn.metrics.f1_score(average="macro")` (classes are those
present in the labels or predictions of the run, as sklearn does). The estimate of a cell is the mean over seeds of
the per-seed metric, which is what the study's tables report. Deterministic baselines (TF-IDF) are one seed.

Seeds and documents are crossed (every seed reads every document), not nested, so seeds and documents are resampled
independently of each other; Owen (2007) shows this "pigeonhole" bootstrap of a crossed design is mildly conservative
(its variance counts the seed x document interaction term about three times instead of once), which errs on the side
of calling fewer differences.

References: Efron & Tibshirani (1993), "An Introduction to the Bootstrap", ch. 13 (percentile interval) and ch. 16
(bootstrap tests); Davison & Hinkley (1997), "Bootstrap Methods and their Application", sec. 3.8 (resampling
hierarchical data) and sec. 4.4 (bootstrap p-values); Owen (2007), "The pigeonhole bootstrap", Annals of Applied
Statistics 1(2); Koehn (2004), "Statistical Significance Tests for Machine Translation Evaluation" (paired bootstrap
over test items); Bouthillier et al. (2021), "Accounting for Variance in Machine Learning Benchmarks" (seeds and
test-set sampling as two sources of variance).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import stats as scipy_stats

from ..hub.files import atomic_path

__all__ = [
    "Cell",
    "CellComparison",
    "Difference",
    "Interval",
    "TableComparison",
    "cell_interval",
    "compare_tables",
    "difference_table",
    "format_difference",
    "format_interval",
    "interval_table",
    "macro_f1",
    "markdown_difference_table",
    "markdown_glance_table",
    "markdown_interval_table",
    "paired_difference",
    "plot_differences",
    "plot_interval_panels",
    "plot_intervals",
]

Metric = Literal["accuracy", "macro_f1"]

#: Default number of bootstrap replicates: the Monte-Carlo error of a 95% percentile bound with 10000 replicates is
#: about 0.002 on an accuracy scale for 300 documents, well under the display precision of two digits.
N_RESAMPLES = 10_000

#: Replicates are drawn in chunks of at most this many (replicate, document) cells, so memory stays bounded (about
#: 16 MB per float64 weight matrix) for large test sets. The chunking is part of the random stream: a fixed seed gives
#: the same interval on every machine.
_CHUNK_CELLS = 2_000_000

#: A difference this close to zero is zero: differences of means of 0/1 values are multiples of
#: 1 / (seeds * documents), and summing over seeds leaves rounding noise of about 1e-17 where the exact value is 0.
ZERO_TOLERANCE = 1e-12

#: Two values "agree exactly" within this tolerance (floating-point noise of JSON round trips and summation order).
EXACT_TOLERANCE = 1e-9


# ---------------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval.

    Args:
        estimate (`float`): The metric on the observed data (mean over seeds of the per-seed metric).
        low (`float`): Lower bound of the interval.
        high (`float`): Upper bound of the interval.
        level (`float`, *optional*, defaults to 0.95): Coverage of the interval.
        n_seeds (`int`, *optional*, defaults to 1): Seeds (runs) behind the estimate.
        n_docs (`int`, *optional*, defaults to 0): Documents each run was evaluated on.
    """

    estimate: float
    low: float
    high: float
    level: float = 0.95
    n_seeds: int = 1
    n_docs: int = 0

    @property
    def width(self) -> float:
        """`high - low`."""
        return self.high - self.low

    def contains(self, value: float, tolerance: float = EXACT_TOLERANCE) -> bool:
        """Whether `value` lies in `[low, high]` (bounds included, with a floating-point tolerance)."""
        return self.low - tolerance <= value <= self.high + tolerance


@dataclass(frozen=True)
class Difference:
    """Variant minus baseline on the same documents, with a paired bootstrap interval.

    Args:
        estimate (`float`): Observed difference of the two cells' estimates.
        low (`float`): Lower bound of the interval.
        high (`float`): Upper bound of the interval.
        p_value (`float`): Two-sided bootstrap p-value for "no difference" (see `paired_difference`).
        level (`float`, *optional*, defaults to 0.95): Coverage of the interval.
        paired_seeds (`bool`, *optional*, defaults to `False`): Whether seeds were resampled jointly (same seeds on
            both sides) or independently.
    """

    estimate: float
    low: float
    high: float
    p_value: float
    level: float = 0.95
    paired_seeds: bool = False

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval excludes zero (by more than rounding noise): the difference is distinguishable from
        noise at this level."""
        return self.low > ZERO_TOLERANCE or self.high < -ZERO_TOLERANCE

    @property
    def significant(self) -> bool:
        """Alias of `excludes_zero`."""
        return self.excludes_zero


# ---------------------------------------------------------------------------------------------------------------------
# Per-document data
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    """One cell's per-document data, validated: `values` (n_seeds, n_docs) for the mean, or coded pairs for F1."""

    n_seeds: int
    n_docs: int
    values: np.ndarray | None = None  # float64 (n_seeds, n_docs)
    predictions: np.ndarray | None = None  # int64 codes (n_seeds, n_docs)
    labels: np.ndarray | None = None  # int64 codes (n_seeds, n_docs)
    n_classes: int = 0


def _as_2d(array: Any, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (n_docs,) or (n_seeds, n_docs), got shape {array.shape}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}): a cell needs at least one seed and one document.")
    return array


def _prepare(data: Any, metric: Metric, name: str = "data") -> _Data:
    """Validate one cell's data and bring it to the shape the bootstrap uses."""
    if metric not in ("accuracy", "macro_f1"):
        raise ValueError(f"metric must be 'accuracy' or 'macro_f1', got {metric!r}.")
    if isinstance(data, _Data):
        return data
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(f"{name}: a tuple must be (predictions, labels), got {len(data)} items.")
        predictions = _as_2d(data[0], f"{name} predictions")
        labels = _as_2d(data[1], f"{name} labels")
        if labels.shape[1] != predictions.shape[1]:
            raise ValueError(
                f"{name}: predictions cover {predictions.shape[1]} documents but labels {labels.shape[1]}."
            )
        if labels.shape[0] not in (1, predictions.shape[0]):
            raise ValueError(
                f"{name}: labels have {labels.shape[0]} rows for {predictions.shape[0]} seeds; give one row "
                "(shared by all seeds) or one per seed."
            )
        labels = np.broadcast_to(labels, predictions.shape)
        if metric == "accuracy":
            return _prepare((predictions == labels).astype(np.float64), metric, name)
        classes, codes = np.unique(np.concatenate([predictions.ravel(), labels.ravel()]), return_inverse=True)
        codes = codes.reshape(2, *predictions.shape)
        return _Data(
            n_seeds=predictions.shape[0],
            n_docs=predictions.shape[1],
            predictions=codes[0],
            labels=codes[1],
            n_classes=len(classes),
        )
    if metric == "macro_f1":
        raise ValueError(f"{name}: macro_f1 needs (predictions, labels), not per-document correctness.")
    values = _as_2d(data, name).astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return _Data(n_seeds=values.shape[0], n_docs=values.shape[1], values=values)


def _check_options(n_resamples: int, level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}.")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}.")


# ---------------------------------------------------------------------------------------------------------------------
# Metrics on weighted documents (a bootstrap replicate is a vector of document counts)
# ---------------------------------------------------------------------------------------------------------------------


def _f1_from_counts(tp: np.ndarray, pred_count: np.ndarray, label_count: np.ndarray) -> np.ndarray:
    """Macro-F1 over the last axis (classes) from true positives and predicted / true class counts.

    F1 of a class is 2 TP / (2 TP + FP + FN) = 2 TP / (predicted + true). A class neither predicted nor present has a
    zero denominator and is left out of the mean, as sklearn leaves out labels absent from both arrays.
    """
    denominator = pred_count + label_count
    present = denominator > 0
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(denominator, dtype=np.float64), where=present)
    return f1.sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def _per_seed(data: _Data, weights: np.ndarray) -> np.ndarray:
    """The metric of every seed on every replicate: `weights` (n_rep, n_docs) counts -> (n_rep, n_seeds)."""
    if data.values is not None:
        return weights @ data.values.T / data.n_docs
    classes = np.arange(data.n_classes)
    predicted = data.predictions[..., None] == classes  # (S, D, C)
    true = data.labels[..., None] == classes
    # One matrix product for the three counts of every seed and class: (R, D) @ (D, 3 S C), exact on integer counts.
    indicators = np.concatenate([predicted & true, predicted, true], axis=-1).transpose(1, 0, 2)
    counts = (weights @ indicators.reshape(data.n_docs, -1).astype(np.float64)).reshape(
        len(weights), data.n_seeds, 3, -1
    )
    return _f1_from_counts(counts[..., 0, :], counts[..., 1, :], counts[..., 2, :])


def _estimate(data: _Data) -> float:
    """The observed metric: mean over seeds of the per-seed metric on all documents."""
    return float(_per_seed(data, np.ones((1, data.n_docs)))[0].mean())


def macro_f1(predictions: Any, labels: Any) -> float:
    """Macro-F1 of one run (or the mean over seeds for 2-D predictions), equal to sklearn's `average="macro"`.

    Args:
        predictions (`array-like`): Predicted classes, `(n_docs,)` or `(n_seeds, n_docs)`.
        labels (`array-like`): True classes, `(n_docs,)` or one row per seed.

    Returns:
        `float`: The macro-F1 (mean over seeds for several seeds).
    """
    return _estimate(_prepare((predictions, labels), "macro_f1"))


# ---------------------------------------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------------------------------------


def _counts(rng: np.random.Generator, n_items: int, n_rep: int) -> np.ndarray:
    """(n_rep, n_items) counts of `n_items` draws with replacement per replicate (bincount over flat indices)."""
    if n_items == 1:
        return np.ones((n_rep, 1))
    draws = rng.integers(0, n_items, size=(n_rep, n_items))
    flat = draws + (np.arange(n_rep) * n_items)[:, None]
    return np.bincount(flat.ravel(), minlength=n_rep * n_items).reshape(n_rep, n_items).astype(np.float64)


def _replicates(
    sides: list[_Data], n_resamples: int, rng: np.random.Generator, paired_seeds: bool = False
) -> list[np.ndarray]:
    """Hierarchical bootstrap: per replicate, seeds of each side with replacement (jointly when `paired_seeds`), then
    documents with replacement, shared by every seed and side. Returns each side's statistic, (n_resamples,) each.
    """
    n_docs = sides[0].n_docs
    chunk = max(1, _CHUNK_CELLS // n_docs)
    out = [np.empty(n_resamples) for _ in sides]
    for start in range(0, n_resamples, chunk):
        n_rep = min(chunk, n_resamples - start)
        seed_weights = []
        for i, side in enumerate(sides):
            if paired_seeds and i > 0:
                seed_weights.append(seed_weights[0])
            else:
                seed_weights.append(_counts(rng, side.n_seeds, n_rep))
        doc_weights = _counts(rng, n_docs, n_rep)
        for i, side in enumerate(sides):
            per_seed = _per_seed(side, doc_weights)
            out[i][start : start + n_rep] = (per_seed * seed_weights[i]).sum(axis=1) / side.n_seeds
    return out


def _percentile_bounds(distribution: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    low, high = np.percentile(distribution, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def _class_counts(predictions: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, ...]:
    """True positives, predicted and true counts per class of integer arrays `(..., n_docs)` -> `(..., n_classes)`
    each, by one `bincount` per count over row-offset classes (a one-hot `(..., n_docs, n_classes)` array costs
    n_classes times the memory and time: 20 Newsgroups' 20 classes made it the slowest step of a study's tables)."""
    shape = predictions.shape[:-1]
    rows = int(np.prod(shape, dtype=np.int64))
    offset = (np.arange(rows) * n_classes)[:, None]
    predicted = predictions.reshape(rows, -1) + offset
    true = labels.reshape(rows, -1) + offset

    def count(flat: np.ndarray) -> np.ndarray:
        return np.bincount(flat.ravel(), minlength=rows * n_classes).reshape(*shape, n_classes).astype(np.float64)

    return count(predicted[predicted == true]), count(predicted), count(true)


def _scipy_statistic(sides: list[_Data]) -> Callable[..., np.ndarray]:
    """A vectorized statistic for `scipy.stats.bootstrap` over the 1-D arrays of single-seed sides: the first side's
    metric minus the others' (one side: the metric itself)."""

    def metric(arrays: list[np.ndarray], side: _Data) -> np.ndarray:
        if side.values is not None:
            return arrays[0].mean(axis=-1)
        return _f1_from_counts(*_class_counts(arrays[0], arrays[1], side.n_classes))

    sizes = [1 if side.values is not None else 2 for side in sides]

    def statistic(*arrays: np.ndarray, axis: int = -1) -> np.ndarray:
        arrays = [np.moveaxis(array, axis, -1) for array in arrays]
        values, position = [], 0
        for side, size in zip(sides, sizes):
            values.append(metric(arrays[position : position + size], side))
            position += size
        return values[0] - sum(values[1:]) if len(values) > 1 else values[0]

    return statistic


# scipy 1.15 renamed `random_state` to `rng`; older releases (scikit-learn 1.3 allows them) only know the former.
_RNG_KEYWORD = "rng" if "rng" in inspect.signature(scipy_stats.bootstrap).parameters else "random_state"


def _scipy_bootstrap(sides: list[_Data], n_resamples: int, level: float, rng: np.random.Generator) -> Any:
    """Single-level (every side one seed) percentile bootstrap with scipy, documents resampled jointly (paired)."""
    arrays: list[np.ndarray] = []
    for side in sides:
        arrays.extend([side.values[0]] if side.values is not None else [side.predictions[0], side.labels[0]])
    return scipy_stats.bootstrap(
        tuple(arrays),
        _scipy_statistic(sides),
        n_resamples=n_resamples,
        vectorized=True,
        paired=True,
        confidence_level=level,
        method="percentile",
        **{_RNG_KEYWORD: rng},
    )


# ---------------------------------------------------------------------------------------------------------------------
# Public API: one cell, one difference
# ---------------------------------------------------------------------------------------------------------------------


def cell_interval(
    data: Any,
    *,
    metric: Metric = "accuracy",
    n_resamples: int = N_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of one cell (variant x length) over documents and seeds.

    Each replicate draws `n_seeds` seeds with replacement, then `n_docs` documents with replacement, the same documents
    for every seed (all seeds evaluate the same test documents, so their errors are correlated through the documents),
    and takes the mean over the drawn seeds of each seed's metric on the drawn documents. With one seed this is the
    ordinary bootstrap over documents, done by `scipy.stats.bootstrap(method="percentile")`.

    Three seeds make a coarse top level: a bootstrap of 3 values underestimates their variance (by (n-1)/n, and the
    resampled mean takes only 10 values). In a simulation (logistic model, 300 documents of N(0, 1) difficulty, 3 seeds
    with a N(0, sd) logit offset, 300 repetitions) the 95% interval covered the population accuracy 99% of the time
    with sd 0, 91% with sd 0.3 and 81% with sd 0.6: conservative when seeds agree, too narrow when they disagree a
    lot. Where the seeds' spread is large, more seeds are the remedy, not a wider level.

    Args:
        data (`array-like` or `tuple`): Per-document values `(n_docs,)` / `(n_seeds, n_docs)`, or a
            `(predictions, labels)` tuple (see the module docstring).
        metric (`str`, *optional*, defaults to `"accuracy"`): `"accuracy"` (mean of per-document values) or
            `"macro_f1"` (needs a tuple).
        n_resamples (`int`, *optional*, defaults to 10000): Bootstrap replicates.
        level (`float`, *optional*, defaults to 0.95): Coverage of the interval.
        seed (`int`, *optional*, defaults to 0): Seed of the `numpy.random.Generator`; the same seed gives the same
            interval.

    Returns:
        `Interval`: The estimate (mean over seeds of the per-seed metric) and the percentile interval.

    Raises:
        `ValueError`: On empty data, mismatched shapes, non-finite values, or `macro_f1` without labels.
    """
    _check_options(n_resamples, level)
    prepared = _prepare(data, metric)
    rng = np.random.default_rng(seed)
    # scipy.stats.bootstrap refuses a single observation; the hierarchical code handles it (a degenerate interval).
    if prepared.n_seeds == 1 and prepared.n_docs > 1:
        result = _scipy_bootstrap([prepared], n_resamples, level, rng)
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    else:
        (distribution,) = _replicates([prepared], n_resamples, rng)
        low, high = _percentile_bounds(distribution, level)
    return Interval(_estimate(prepared), low, high, level, prepared.n_seeds, prepared.n_docs)


def _seed_alignment(
    n_variant: int, n_baseline: int, variant_seeds: Iterable[int] | None, baseline_seeds: Iterable[int] | None
) -> list[int] | None:
    """Row order of the baseline that pairs it with the variant's seeds, or None when the seeds cannot be paired."""
    if variant_seeds is None and baseline_seeds is None:
        # Without seed values, equal counts are taken as the same seeds in the same order (how the study's sweeps
        # store runs); a one-seed side (a deterministic baseline) is never "paired": there is nothing to resample.
        return list(range(n_variant)) if n_variant == n_baseline > 1 else None
    variant_seeds = None if variant_seeds is None else list(variant_seeds)
    baseline_seeds = None if baseline_seeds is None else list(baseline_seeds)
    for seeds, count, name in ((variant_seeds, n_variant, "variant"), (baseline_seeds, n_baseline, "baseline")):
        if seeds is None:
            continue
        if len(seeds) != count:
            raise ValueError(f"{name}_seeds lists {len(seeds)} seeds but the {name} data has {count} rows.")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{name}_seeds has repeated seeds: {seeds}.")
    if variant_seeds is None or baseline_seeds is None or set(variant_seeds) != set(baseline_seeds) or n_variant == 1:
        return None
    return [baseline_seeds.index(seed) for seed in variant_seeds]


def _reorder(data: _Data, order: list[int]) -> _Data:
    if data.values is not None:
        return _Data(data.n_seeds, data.n_docs, values=data.values[order])
    return _Data(
        data.n_seeds,
        data.n_docs,
        predictions=data.predictions[order],
        labels=data.labels[order],
        n_classes=data.n_classes,
    )


def paired_difference(
    variant: Any,
    baseline: Any,
    *,
    metric: Metric = "accuracy",
    variant_seeds: Iterable[int] | None = None,
    baseline_seeds: Iterable[int] | None = None,
    n_resamples: int = N_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> Difference:
    """Variant minus baseline at one length, with a paired bootstrap interval.

    Both sides must be evaluated on the same documents in the same order. Each replicate draws one set of documents
    for both sides (pairing removes the document-difficulty noise the two share, Koehn 2004). Seeds are drawn jointly
    when both sides were trained with the same seeds (same seed values, or, without seed values, the same number of
    rows taken in the same order), so seed-to-seed effects shared through the seed (data order, head initialization)
    cancel too; otherwise each side's seeds are drawn independently. A baseline without seeds (TF-IDF) is one seed.

    The p-value is the two-sided bootstrap p-value `2 * min(P*(d <= 0), P*(d >= 0))` over the replicates `d`, with the
    `(1 + count) / (1 + n_resamples)` correction so it is never zero (Davison & Hinkley 1997, sec. 4.4), capped at 1.

    Args:
        variant (`array-like` or `tuple`): The variant's per-document data (see `cell_interval`).
        baseline (`array-like` or `tuple`): The baseline's per-document data on the same documents.
        metric (`str`, *optional*, defaults to `"accuracy"`): `"accuracy"` or `"macro_f1"`.
        variant_seeds (`Iterable[int]`, *optional*): Seed values of the variant's rows.
        baseline_seeds (`Iterable[int]`, *optional*): Seed values of the baseline's rows.
        n_resamples (`int`, *optional*, defaults to 10000): Bootstrap replicates.
        level (`float`, *optional*, defaults to 0.95): Coverage of the interval.
        seed (`int`, *optional*, defaults to 0): Seed of the `numpy.random.Generator`.

    Returns:
        `Difference`: Observed difference, interval, p-value, and whether seeds were paired.

    Raises:
        `ValueError`: When the two sides cover different numbers of documents, on empty or malformed data, or when
            seed lists do not match the data.
    """
    _check_options(n_resamples, level)
    variant_data = _prepare(variant, metric, "variant")
    baseline_data = _prepare(baseline, metric, "baseline")
    if variant_data.n_docs != baseline_data.n_docs:
        raise ValueError(
            f"variant has {variant_data.n_docs} documents but baseline has {baseline_data.n_docs}: a paired "
            "difference needs both evaluated on the same documents."
        )
    order = _seed_alignment(variant_data.n_seeds, baseline_data.n_seeds, variant_seeds, baseline_seeds)
    if order is not None:
        baseline_data = _reorder(baseline_data, order)
    rng = np.random.default_rng(seed)
    estimate = _estimate(variant_data) - _estimate(baseline_data)
    if variant_data.n_seeds == baseline_data.n_seeds == 1 and variant_data.n_docs > 1:
        result = _scipy_bootstrap([variant_data, baseline_data], n_resamples, level, rng)
        distribution = np.asarray(result.bootstrap_distribution)
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    else:
        variant_rep, baseline_rep = _replicates(
            [variant_data, baseline_data], n_resamples, rng, paired_seeds=order is not None
        )
        distribution = variant_rep - baseline_rep
        low, high = _percentile_bounds(distribution, level)
    # Exact zeros must count as zeros, in the p-value as in the bounds and the estimate.
    at_most = np.count_nonzero(distribution <= ZERO_TOLERANCE)
    at_least = np.count_nonzero(distribution >= -ZERO_TOLERANCE)
    p_value = float(min(1.0, 2 * (1 + min(at_most, at_least)) / (1 + n_resamples)))
    estimate, low, high = (_snap_zero(value) for value in (estimate, low, high))
    return Difference(estimate, low, high, p_value, level, paired_seeds=order is not None)


def _snap_zero(value: float) -> float:
    """0.0 for a value within rounding noise of zero (no "-0.000" estimate, no bound a hair off zero)."""
    return 0.0 if abs(value) <= ZERO_TOLERANCE else float(value)


# ---------------------------------------------------------------------------------------------------------------------
# Whole tables
# ---------------------------------------------------------------------------------------------------------------------


def interval_table(
    data: Mapping[str, Mapping[int, Any]],
    *,
    metric: Metric = "accuracy",
    n_resamples: int = N_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[int, Interval]]:
    """`cell_interval` for every cell of `data[variant][length]` (per-document data), same options for all cells.

    Returns:
        `dict[str, dict[int, Interval]]`: The intervals, keyed like `data`.
    """
    return {
        variant: {
            length: cell_interval(cell, metric=metric, n_resamples=n_resamples, level=level, seed=seed)
            for length, cell in by_length.items()
        }
        for variant, by_length in data.items()
    }


def difference_table(
    data: Mapping[str, Mapping[int, Any]],
    baseline: str,
    *,
    metric: Metric = "accuracy",
    seeds: Mapping[str, Iterable[int]] | None = None,
    n_resamples: int = N_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[int, Difference]]:
    """`paired_difference` of every other variant to the `baseline` row, at each length both have.

    Args:
        data (`Mapping[str, Mapping[int, Any]]`): Per-document data, `data[variant][length]`.
        baseline (`str`): The row to subtract.
        metric (`str`, *optional*, defaults to `"accuracy"`): `"accuracy"` or `"macro_f1"`.
        seeds (`Mapping[str, Iterable[int]]`, *optional*): Seed values of each variant's rows (for seed pairing).
        n_resamples (`int`, *optional*, defaults to 10000): Bootstrap replicates.
        level (`float`, *optional*, defaults to 0.95): Coverage of the intervals.
        seed (`int`, *optional*, defaults to 0): Seed of the `numpy.random.Generator`.

    Returns:
        `dict[str, dict[int, Difference]]`: The differences, without the baseline row.
    """
    if baseline not in data:
        raise ValueError(f"baseline {baseline!r} is not a row of the table (rows: {sorted(data)}).")
    seeds = seeds or {}
    table: dict[str, dict[int, Difference]] = {}
    for variant, by_length in data.items():
        if variant == baseline:
            continue
        table[variant] = {
            length: paired_difference(
                cell,
                data[baseline][length],
                metric=metric,
                variant_seeds=seeds.get(variant),
                baseline_seeds=seeds.get(baseline),
                n_resamples=n_resamples,
                level=level,
                seed=seed,
            )
            for length, cell in by_length.items()
            if length in data[baseline]
        }
    return table


# ---------------------------------------------------------------------------------------------------------------------
# Fresh study vs committed reference
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One cell of a results table for `compare_tables`: a value, optionally an interval and per-document data.

    Args:
        value (`float`): The reported value (mean over seeds).
        low (`float`, *optional*): Lower bound of its interval.
        high (`float`, *optional*): Upper bound of its interval.
        data (`Any`, *optional*): Per-document data (see `cell_interval`), which enables a paired test.
        seeds (`tuple[int, ...]`, *optional*): Seed values of the rows of `data`.
    """

    value: float
    low: float | None = None
    high: float | None = None
    data: Any = None
    seeds: tuple[int, ...] | None = None

    @property
    def interval(self) -> Interval | None:
        """The cell's interval, when it has one."""
        if self.low is None or self.high is None:
            return None
        return Interval(self.value, self.low, self.high)


def _as_cell(cell: Any) -> Cell:
    """Accept a `Cell`, an `Interval`, a number, or a JSON-style mapping (`value`/`mean`/`estimate`, `low`, `high`,
    and per-document `correct` or `predictions` + `labels`, optional `seeds`)."""
    if isinstance(cell, Cell):
        return cell
    if isinstance(cell, Interval):
        return Cell(cell.estimate, cell.low, cell.high)
    if isinstance(cell, Mapping):
        value = next((cell[key] for key in ("value", "mean", "estimate") if key in cell), None)
        if value is None:
            raise ValueError(f"a table cell mapping needs 'value', 'mean' or 'estimate', got keys {sorted(cell)}.")
        data = None
        if "predictions" in cell and "labels" in cell:
            data = (cell["predictions"], cell["labels"])
        elif "correct" in cell:
            data = cell["correct"]
        seeds = tuple(cell["seeds"]) if cell.get("seeds") is not None else None
        return Cell(float(value), cell.get("low"), cell.get("high"), data, seeds)
    if isinstance(cell, (int, float, np.floating, np.integer)):
        return Cell(float(cell))
    raise ValueError(f"cannot read a table cell from {type(cell).__name__}: give a number, Interval, Cell or mapping.")


Verdict = Literal["exact", "noise", "differ"]


@dataclass(frozen=True)
class CellComparison:
    """How one fresh cell compares with its reference.

    Args:
        variant (`str`): Row.
        length (`int`): Column.
        fresh (`float`): The fresh value.
        reference (`float`): The reference value.
        verdict (`str`): `"exact"` (within 1e-9), `"noise"` (within the reference interval, or a paired difference
            whose interval includes zero) or `"differ"`.
        interval (`Interval`, *optional*): The interval the verdict used (the reference cell's, computed from its data
            when it had none, or the fresh cell's as a last resort).
        difference (`Difference`, *optional*): The paired difference fresh - reference, when both had data.
    """

    variant: str
    length: int
    fresh: float
    reference: float
    verdict: Verdict
    interval: Interval | None = None
    difference: Difference | None = None

    def describe(self) -> str:
        """A short human line, e.g. `rope@2048 0.61 vs 0.68 [0.64, 0.72]`."""
        text = f"{self.variant}@{self.length} {self.fresh:.2f} vs {self.reference:.2f}"
        if self.difference is not None:
            return f"{text} (difference {format_difference(self.difference)})"
        if self.interval is not None:
            return f"{text} [{self.interval.low:.2f}, {self.interval.high:.2f}]"
        return f"{text} (no interval)"


@dataclass(frozen=True)
class TableComparison:
    """Result of `compare_tables`: one `CellComparison` per shared cell, and the cells only one table has."""

    cells: list[CellComparison]
    only_fresh: list[tuple[str, int]] = field(default_factory=list)
    only_reference: list[tuple[str, int]] = field(default_factory=list)

    def by_verdict(self, verdict: Verdict) -> list[CellComparison]:
        """The cells with this verdict, in table order."""
        return [cell for cell in self.cells if cell.verdict == verdict]

    @property
    def ok(self) -> bool:
        """True when no cell differs and no cell is missing from either table."""
        return not self.by_verdict("differ") and not self.only_fresh and not self.only_reference

    def markdown(self) -> str:
        """One paragraph: "12 cells agree exactly, 3 within noise, 1 differs: rope@2048 0.61 vs 0.68 [0.64, 0.72]"."""
        exact, noise, differ = (len(self.by_verdict(v)) for v in ("exact", "noise", "differ"))
        text = (
            f"{exact} {'cell agrees' if exact == 1 else 'cells agree'} exactly, {noise} within noise, "
            f"{differ} {'differs' if differ == 1 else 'differ'}"
        )
        if differ:
            text += ": " + "; ".join(cell.describe() for cell in self.by_verdict("differ"))
        for name, missing in (("fresh", self.only_fresh), ("reference", self.only_reference)):
            if missing:
                text += f". Only in the {name} table: " + ", ".join(f"{v}@{n}" for v, n in missing)
        return text + "."


def compare_tables(
    fresh: Mapping[str, Mapping[int, Any]],
    reference: Mapping[str, Mapping[int, Any]],
    *,
    metric: Metric = "accuracy",
    tolerance: float = EXACT_TOLERANCE,
    n_resamples: int = N_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> TableComparison:
    """Compare a fresh study's table with a committed reference, cell by cell.

    A cell agrees exactly when the values are equal within `tolerance`. Otherwise it agrees within noise when both
    cells have per-document data and the paired difference's interval includes zero, or (without data on both sides)
    when the fresh value falls inside the reference interval: the reference cell's own, else one computed from its
    per-document data, else (a reference with a bare number) the fresh cell's interval around the reference value.
    Anything else differs, including a cell without any interval.

    Args:
        fresh (`Mapping[str, Mapping[int, Any]]`): `fresh[variant][length]`: a number, `Interval`, `Cell`, or mapping
            (`value`, `low`, `high`, `correct` or `predictions` + `labels`, `seeds`).
        reference (`Mapping[str, Mapping[int, Any]]`): The committed table, same shape.
        metric (`str`, *optional*, defaults to `"accuracy"`): Metric of the per-document data.
        tolerance (`float`, *optional*, defaults to 1e-9): "Exactly" means within this.
        n_resamples (`int`, *optional*, defaults to 10000): Bootstrap replicates where intervals are computed.
        level (`float`, *optional*, defaults to 0.95): Coverage of computed intervals.
        seed (`int`, *optional*, defaults to 0): Seed of the bootstrap.

    Returns:
        `TableComparison`: Per-cell verdicts and a `markdown()` summary.
    """
    options = {"metric": metric, "n_resamples": n_resamples, "level": level, "seed": seed}
    results: list[CellComparison] = []
    only_fresh: list[tuple[str, int]] = []
    only_reference: list[tuple[str, int]] = []
    for variant, by_length in reference.items():
        for length, reference_cell in by_length.items():
            if length not in fresh.get(variant, {}):
                only_reference.append((variant, length))
                continue
            new, old = _as_cell(fresh[variant][length]), _as_cell(reference_cell)
            if abs(new.value - old.value) <= tolerance:
                results.append(CellComparison(variant, length, new.value, old.value, "exact", old.interval))
                continue
            if _same_documents(new.data, old.data):
                difference = paired_difference(
                    new.data, old.data, variant_seeds=new.seeds, baseline_seeds=old.seeds, **options
                )
                verdict: Verdict = "differ" if difference.excludes_zero else "noise"
                results.append(CellComparison(variant, length, new.value, old.value, verdict, None, difference))
                continue
            interval, value = old.interval, new.value
            if interval is None and old.data is not None:
                interval = cell_interval(old.data, **options)
            if interval is None:
                # Only the fresh side carries an interval: ask whether the reference value lies inside it.
                interval = new.interval or (cell_interval(new.data, **options) if new.data is not None else None)
                value = old.value
            verdict = "noise" if interval is not None and interval.contains(value) else "differ"
            results.append(CellComparison(variant, length, new.value, old.value, verdict, interval))
    for variant, by_length in fresh.items():
        only_fresh.extend((variant, length) for length in by_length if length not in reference.get(variant, {}))
    return TableComparison(results, only_fresh, only_reference)


def _same_documents(fresh: Any, reference: Any) -> bool:
    """Whether two cells' per-document data can be paired: both present, the same number of documents, and (for
    predictions with labels) the same labels in the same order. Otherwise the comparison takes the interval path: a
    different split or test set must not be paired by position."""
    if fresh is None or reference is None:
        return False
    if isinstance(fresh, tuple) and isinstance(reference, tuple):
        return np.array_equal(np.asarray(fresh[1]), np.asarray(reference[1]))
    fresh_docs = np.asarray(fresh[0] if isinstance(fresh, tuple) else fresh).shape[-1]
    return fresh_docs == np.asarray(reference[0] if isinstance(reference, tuple) else reference).shape[-1]


def score_interval(mean: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for the mean of `n` independent scores in [0, 1] (Wilson 1927; Agresti & Coull 1998).

    For 0/1 scores it is the binomial Wilson interval (`scipy.stats.binomtest(k, n).proportion_ci("wilson")`); a
    score between 0 and 1 (a tie's shared credit) has at most the variance of a 0/1 score with the same mean, so the
    interval stays valid, a little conservative. Used where only a cell's mean and size were recorded (the probes);
    unlike a percentile bootstrap it does not collapse to a point at 0 or 1.

    Raises:
        ValueError: `mean` outside [0, 1], `n` below 1, or `level` outside (0, 1).
    """
    if not 0.0 <= mean <= 1.0 or isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"score_interval needs a mean in [0, 1] and n >= 1 scores, got mean={mean!r}, n={n!r}.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    z = float(scipy_stats.norm.ppf(0.5 + level / 2))
    center = (mean + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * float(np.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)))
    return max(0.0, center - half), min(1.0, center + half)


# ---------------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------------


def format_interval(interval: Interval, digits: int = 3, bound_digits: int = 2) -> str:
    """`0.712 [0.66, 0.76]`: the estimate, then the interval at a coarser precision (its bounds are noisier)."""
    return f"{interval.estimate:.{digits}f} [{interval.low:.{bound_digits}f}, {interval.high:.{bound_digits}f}]"


def format_difference(difference: Difference, digits: int = 3, bound_digits: int = 2) -> str:
    """`+0.041 [+0.01, +0.07] *`: signed difference and interval, `*` when the interval excludes zero."""
    low, high = f"{difference.low:+.{bound_digits}f}", f"{difference.high:+.{bound_digits}f}"
    text = f"{difference.estimate:+.{digits}f} [{low}, {high}]"
    return text + (" *" if difference.excludes_zero else "")


def _lengths(table: Mapping[str, Mapping[int, Any]]) -> list[int]:
    return sorted({length for by_length in table.values() for length in by_length})


def _header(corner: str, lengths: list[int], train_length: int | None) -> list[str]:
    names = [f"{n} (trained)" if n == train_length else str(n) for n in lengths]
    return [f"| {corner} | " + " | ".join(names) + " |", "|---" * (len(lengths) + 1) + "|"]


def markdown_interval_table(
    table: Mapping[str, Mapping[int, Interval]],
    *,
    metric: str = "accuracy",
    train_length: int | None = None,
    digits: int = 3,
    bound_digits: int = 2,
) -> str:
    """A Markdown table of `estimate [low, high]` per variant (rows, in mapping order) and length (sorted columns).

    Args:
        table (`Mapping[str, Mapping[int, Interval]]`): `table[variant][length]`, e.g. from `interval_table`.
        metric (`str`, *optional*, defaults to `"accuracy"`): Corner cell.
        train_length (`int`, *optional*): Column marked "(trained)".
        digits (`int`, *optional*, defaults to 3): Digits of the estimate.
        bound_digits (`int`, *optional*, defaults to 2): Digits of the bounds.

    Returns:
        `str`: The table; missing cells are empty.
    """
    lengths = _lengths(table)
    lines = _header(f"{metric} [95% CI]", lengths, train_length)
    for variant, by_length in table.items():
        lines.append(f"| {variant} | " + " | ".join(_interval_cells(by_length, lengths, digits, bound_digits)) + " |")
    return "\n".join(lines) + "\n"


def _interval_cells(by_length: Mapping[int, Interval], lengths: list[int], digits: int, bound_digits: int) -> list:
    return [format_interval(by_length[n], digits, bound_digits) if n in by_length else "" for n in lengths]


def markdown_difference_table(
    table: Mapping[str, Mapping[int, Difference]],
    baseline: str,
    *,
    metric: str = "accuracy",
    train_length: int | None = None,
    digits: int = 3,
    bound_digits: int = 2,
) -> str:
    """A Markdown table of `+0.041 [+0.01, +0.07] *` (difference to `baseline`, `*`: interval excludes zero).

    Args:
        table (`Mapping[str, Mapping[int, Difference]]`): `table[variant][length]`, e.g. from `difference_table`.
        baseline (`str`): Name of the baseline row (named in the corner and the footnote).
        metric (`str`, *optional*, defaults to `"accuracy"`): Metric name for the corner cell.
        train_length (`int`, *optional*): Column marked "(trained)".
        digits (`int`, *optional*, defaults to 3): Digits of the difference.
        bound_digits (`int`, *optional*, defaults to 2): Digits of the bounds.

    Returns:
        `str`: The table and a one-line footnote.
    """
    lengths = _lengths(table)
    lines = _header(f"{metric} - {baseline}", lengths, train_length)
    levels = {d.level for by_length in table.values() for d in by_length.values()}
    for variant, by_length in table.items():
        cells = [format_difference(by_length[n], digits, bound_digits) if n in by_length else "" for n in lengths]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    level = f"{100 * levels.pop():g}%" if len(levels) == 1 else "its"
    footnote = f"\n`*`: the paired bootstrap {level} interval excludes zero (documents and seeds resampled).\n"
    return "\n".join(lines) + "\n" + footnote


def markdown_glance_table(
    intervals: Mapping[str, Mapping[int, Interval]],
    differences: Mapping[str, Mapping[int, Difference]],
    baseline: str,
    *,
    metric: str = "accuracy",
    train_length: int | None = None,
    digits: int = 3,
    bound_digits: int = 2,
) -> str:
    """One table a reader can stop at: each row's interval at every length, then its paired difference to `baseline`
    at the longest length that has one (`*`: the interval excludes zero; empty for the baseline row itself).

    Args:
        intervals (`Mapping[str, Mapping[int, Interval]]`): `intervals[variant][length]` (rows in this order).
        differences (`Mapping[str, Mapping[int, Difference]]`): `differences[variant][length]`.
        baseline (`str`): Name of the baseline row.
        metric (`str`, *optional*, defaults to `"accuracy"`): Metric name for the corner cell.
        train_length (`int`, *optional*): Column marked "(trained)".
        digits (`int`, *optional*, defaults to 3): Digits of the estimates.
        bound_digits (`int`, *optional*, defaults to 2): Digits of the bounds.

    Returns:
        `str`: The table and a one-line footnote ("" without intervals).
    """
    lengths = _lengths(intervals)
    if not lengths:
        return ""
    compared = _lengths(differences)
    longest = compared[-1] if compared else lengths[-1]  # the longest length that has differences
    lines = _header(f"{metric} [95% CI]", lengths, train_length)
    lines[0] = lines[0][:-1] + f"| {longest} - baseline |"
    lines[1] += "---|"
    for variant, by_length in intervals.items():
        cells = _interval_cells(by_length, lengths, digits, bound_digits)
        found = differences.get(variant, {}).get(longest)
        cells.append(format_difference(found, digits, bound_digits) if found is not None else "")
        name = f"{variant} (baseline)" if variant == baseline else variant
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    footnote = f"\n`*`: the paired bootstrap interval of the difference to {baseline} excludes zero.\n"
    return "\n".join(lines) + "\n" + footnote


def plot_intervals(
    table: Mapping[str, Mapping[int, Interval]],
    path: str | Path | None = None,
    *,
    train_length: int | None = None,
    metric: str = "accuracy",
    title: str | None = None,
    bands: bool = True,
    ax: Any = None,
) -> Any:
    """Score vs evaluation length per variant with interval bands (or error bars), log2 x-axis, training length marked.

    Args:
        table (`Mapping[str, Mapping[int, Interval]]`): `table[variant][length]`.
        path (`str` or `Path`, *optional*): Where to save the figure (PNG, SVG... by suffix).
        train_length (`int`, *optional*): Drawn as a dashed vertical line.
        metric (`str`, *optional*, defaults to `"accuracy"`): Y-axis label.
        title (`str`, *optional*): Figure title.
        bands (`bool`, *optional*, defaults to `True`): Shaded bands; `False` draws error bars.
        ax (`matplotlib.axes.Axes`, *optional*): Axes to draw on; a new figure otherwise.

    Returns:
        `matplotlib.figure.Figure`: The figure.
    """
    # A bare Figure (no pyplot) leaves the caller's backend and pyplot state alone and needs no display.
    from matplotlib.figure import Figure

    if ax is None:
        figure = Figure(figsize=(7, 4.5))
        ax = figure.subplots()
    else:
        figure = ax.figure
    for variant, by_length in table.items():
        if bands:
            _draw_row(ax, variant, by_length)
        else:
            lengths = sorted(by_length)
            estimate, low, high = (np.array([getattr(by_length[n], k) for n in lengths]) for k in INTERVAL_FIELDS)
            ax.errorbar(
                lengths, estimate, yerr=[estimate - low, high - estimate], marker="o", capsize=3, label=variant
            )
    _length_axis(ax, table, train_length, metric)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    if path is not None:
        figure.tight_layout()
        _save(figure, path, dpi=120)
    return figure


PANEL_ROWS = 6
"""Rows per panel of `plot_interval_panels` besides its reference rows: few enough to tell the colours apart."""


def plot_interval_panels(
    table: Mapping[str, Mapping[int, Interval]],
    path: str | Path | None = None,
    *,
    references: Sequence[str] = (),
    per_panel: int = PANEL_ROWS,
    train_length: int | None = None,
    metric: str = "accuracy",
    title: str | None = None,
) -> Any:
    """Score vs evaluation length as small multiples: the rows in table order, `per_panel` to a panel, every panel
    with the `references` rows (e.g. the baseline and TF-IDF) in grey and black for comparison, one y-axis for all,
    each panel's legend under it. A study of thirty rows stays readable, where one panel would repeat its colours.

    Args:
        table (`Mapping[str, Mapping[int, Interval]]`): `table[variant][length]`.
        path (`str` or `Path`, *optional*): Where to save the figure (PNG, SVG... by suffix).
        references (`Sequence[str]`, *optional*): Rows drawn in every panel (those missing from `table` are skipped).
        per_panel (`int`, *optional*, defaults to 6): Other rows per panel.
        train_length (`int`, *optional*): Drawn as a dotted vertical line.
        metric (`str`, *optional*, defaults to `"accuracy"`): Y-axis label.
        title (`str`, *optional*): Figure title.

    Returns:
        `matplotlib.figure.Figure`: The figure.
    """
    from matplotlib.figure import Figure

    if per_panel < 1:
        raise ValueError(f"per_panel must be >= 1, got {per_panel!r}.")
    references = [row for row in references if row in table]
    rows = [row for row in table if row not in references]
    groups = [rows[start : start + per_panel] for start in range(0, len(rows), per_panel)] or [[]]
    columns = 1 if len(groups) == 1 else 2
    lines = -(-len(groups) // columns)
    figure = Figure(figsize=(7 * columns, 4.6 * lines + 0.6), layout="constrained")
    axes = list(figure.subplots(lines, columns, sharey=True, squeeze=False).flat)
    for ax, group in zip(axes, groups):
        for index, row in enumerate(references):
            _draw_row(ax, row, table[row], color=("black", "dimgray", "darkgray")[index % 3], linestyle="--")
        for index, row in enumerate(group):
            _draw_row(ax, row, table[row], color=f"C{index % 10}")
        _length_axis(ax, table, train_length, metric, train_style=":")  # the references are dashed here
        ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    for ax in axes[len(groups) :]:  # the grid's last panel when the groups are odd
        ax.set_visible(False)
    if title:
        figure.suptitle(title)
    if path is not None:
        _save(figure, path, dpi=110)
    return figure


INTERVAL_FIELDS = ("estimate", "low", "high")


def _draw_row(ax: Any, row: str, by_length: Mapping[int, Interval], **style) -> None:
    """One row's estimates against length, its interval a band in the line's colour."""
    lengths = sorted(by_length)
    estimate, low, high = (np.array([getattr(by_length[n], k) for n in lengths]) for k in INTERVAL_FIELDS)
    (line,) = ax.plot(lengths, estimate, marker="o", markersize=4, label=row, **style)
    ax.fill_between(lengths, low, high, color=line.get_color(), alpha=0.12, linewidth=0)


def _save(figure: Any, path: str | Path, dpi: int) -> None:
    """Write a figure atomically, in the format its suffix names (PNG by default)."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")


def _length_axis(
    ax: Any, table: Mapping[str, Mapping[int, Any]], train_length: int | None, metric: str, train_style: str = "--"
) -> None:
    """The score-vs-length axes: log2 lengths as ticks, the training length as a vertical line, labels, grid."""
    if train_length is not None:
        label = f"training length ({train_length})"
        ax.axvline(train_length, color="gray", linestyle=train_style, linewidth=1, label=label)
    ax.set_xscale("log", base=2)
    lengths = _lengths(table)
    if lengths:
        ax.set_xticks(lengths)
        ax.set_xticklabels([str(n) for n in lengths])
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel(f"{metric} (95% interval)")
    ax.grid(True, alpha=0.3)


def plot_differences(
    table: Mapping[str, Mapping[int, Difference]],
    path: str | Path | None = None,
    *,
    baseline: str,
    metric: str = "accuracy",
    title: str | None = None,
) -> Any:
    """A forest plot: each row's paired difference to `baseline` with its 95% interval, one panel per evaluation
    length, rows top to bottom in table order; a filled marker where the interval excludes zero, hollow where not.

    Args:
        table (`Mapping[str, Mapping[int, Difference]]`): `table[variant][length]`, e.g. from `difference_table`.
        path (`str` or `Path`, *optional*): Where to save the figure (PNG, SVG... by suffix).
        baseline (`str`): Name of the baseline row (named in the axis labels).
        metric (`str`, *optional*, defaults to `"accuracy"`): Metric name for the labels.
        title (`str`, *optional*): Figure title.

    Returns:
        `matplotlib.figure.Figure`: The figure.
    """
    from matplotlib.figure import Figure

    rows, lengths = list(table), _lengths(table)
    figure = Figure(figsize=(3 * max(len(lengths), 1) + 3.5, 0.27 * len(rows) + 1.6), layout="constrained")
    axes = figure.subplots(1, max(len(lengths), 1), sharey=True, squeeze=False)[0]
    for ax, length in zip(axes, lengths):
        for position, row in enumerate(rows):
            difference = table[row].get(length)
            if difference is None:
                continue
            color = ("tab:blue" if difference.estimate > 0 else "tab:red") if difference.excludes_zero else "gray"
            ax.errorbar(
                difference.estimate,
                position,
                xerr=[[difference.estimate - difference.low], [difference.high - difference.estimate]],
                fmt="o",
                color=color,
                markerfacecolor=color if difference.excludes_zero else "white",
                markersize=5,
                capsize=2,
            )
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_title(f"{length} tokens", fontsize="medium")
        ax.set_xlabel(f"{metric} difference")
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), rows, fontsize="small")
    axes[0].set_ylim(max(len(rows), 1) - 0.5, -0.5)  # the table's first row on top
    figure.suptitle(title or f"{metric} minus {baseline}: paired 95% intervals (filled: the interval excludes zero)")
    if path is not None:
        _save(figure, path, dpi=110)
    return figure
