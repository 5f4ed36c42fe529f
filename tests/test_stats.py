"""Known-answer tests of the study's statistics (hf_posenc.recipes.stats): bootstrap intervals, paired differences,
reference comparisons and rendering. Every test runs in well under 2 s on one core."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from hf_posenc.recipes import stats
from hf_posenc.recipes.stats import (
    Cell,
    Difference,
    Interval,
    cell_interval,
    compare_tables,
    difference_table,
    format_difference,
    format_interval,
    interval_table,
    macro_f1,
    markdown_difference_table,
    markdown_interval_table,
    paired_difference,
    plot_differences,
    plot_interval_panels,
    plot_intervals,
)

FAST = 2000  # replicates where the test checks a property, not a Monte-Carlo-precise bound


def bernoulli(p: float, shape, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < p).astype(float)


# ---------------------------------------------------------------------------------------------------------------------
# One cell
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_all_correct_gives_one_one(n_seeds):
    interval = cell_interval(np.ones((n_seeds, 300)), n_resamples=FAST)
    assert (interval.estimate, interval.low, interval.high) == (1.0, 1.0, 1.0)
    assert (interval.n_seeds, interval.n_docs) == (n_seeds, 300)


def test_bernoulli_interval_matches_the_normal_approximation():
    n = 2000
    correct = bernoulli(0.7, n, seed=3)
    interval = cell_interval(correct, n_resamples=5000)
    assert interval.contains(0.7)
    # Wald width 2 * 1.96 * sqrt(p (1 - p) / n) for p = 0.7.
    expected = 2 * 1.96 * math.sqrt(0.21 / n)
    assert interval.width == pytest.approx(expected, rel=0.2)
    assert interval.estimate == pytest.approx(correct.mean())


def test_hierarchical_with_identical_seeds_is_the_document_bootstrap():
    # Three copies of one run carry no seed noise: the width is the documents' alone, as with one seed.
    correct = bernoulli(0.7, 300, seed=4)
    one = cell_interval(correct)
    three = cell_interval(np.stack([correct] * 3))
    assert three.estimate == one.estimate
    assert three.width == pytest.approx(one.width, rel=0.1)


def test_hierarchical_width_grows_when_seeds_disagree():
    # Same overall accuracy (0.7) on 300 documents; the seeds agree (one run repeated) or spread 0.5 / 0.7 / 0.9.
    base = np.zeros(300)
    base[:210] = 1
    agree = np.stack([base] * 3)
    disagree = np.zeros((3, 300))
    for row, n_correct in enumerate((150, 210, 270)):
        disagree[row, :n_correct] = 1
    narrow = cell_interval(agree, n_resamples=FAST)
    wide = cell_interval(disagree, n_resamples=FAST)
    assert narrow.estimate == pytest.approx(wide.estimate) == pytest.approx(0.7)
    assert wide.width > 2 * narrow.width


def test_same_seed_same_interval():
    correct = bernoulli(0.6, (3, 300), seed=5)
    assert cell_interval(correct, seed=7, n_resamples=FAST) == cell_interval(correct, seed=7, n_resamples=FAST)
    assert cell_interval(correct[0], seed=7, n_resamples=FAST) == cell_interval(correct[0], seed=7, n_resamples=FAST)
    assert cell_interval(correct, seed=7, n_resamples=FAST) != cell_interval(correct, seed=8, n_resamples=FAST)


def test_scores_are_averaged_like_correctness():
    scores = np.random.default_rng(6).random((2, 50))
    interval = cell_interval(scores, n_resamples=FAST)
    assert interval.estimate == pytest.approx(scores.mean())
    assert scores.min() <= interval.low <= interval.estimate <= interval.high <= scores.max()


def test_pairs_give_accuracy_by_default():
    labels = np.array([0, 1, 1, 0, 2, 2])
    predictions = np.array([[0, 1, 0, 0, 2, 1], [0, 1, 1, 0, 2, 2]])
    interval = cell_interval((predictions, labels), n_resamples=FAST)
    assert interval.estimate == pytest.approx((4 / 6 + 1) / 2)


def test_interval_is_ordered_and_within_the_data():
    # Random small cells, down to one document and one seed (scipy refuses one observation; the fallback must not).
    rng = np.random.default_rng(17)
    for n_docs in (1, 2, 3, 7, 40):
        for n_seeds in (1, 3):
            correct = (rng.random((n_seeds, n_docs)) < 0.5).astype(float)
            interval = cell_interval(correct, n_resamples=200)
            assert correct.min() - 1e-12 <= interval.low <= interval.high <= correct.max() + 1e-12


# ---------------------------------------------------------------------------------------------------------------------
# Macro-F1
# ---------------------------------------------------------------------------------------------------------------------


def test_macro_f1_point_estimate_matches_sklearn():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 3, 200)
    # Seed 0 never predicts class 2 and predicts a class (3) absent from the labels: sklearn's union of labels.
    predictions = np.where(rng.random((3, 200)) < 0.7, labels, rng.integers(0, 3, (3, 200)))
    predictions[0][predictions[0] == 2] = 3
    expected = [f1_score(labels, row, average="macro", zero_division=0) for row in predictions]
    assert macro_f1(predictions[0], labels) == pytest.approx(expected[0], abs=1e-12)
    assert macro_f1(predictions, labels) == pytest.approx(np.mean(expected), abs=1e-12)
    interval = cell_interval((predictions, labels), metric="macro_f1", n_resamples=FAST)
    assert interval.estimate == pytest.approx(np.mean(expected), abs=1e-12)
    assert interval.low < interval.estimate < interval.high
    single = cell_interval((predictions[1], labels), metric="macro_f1", n_resamples=FAST)
    assert single.estimate == pytest.approx(expected[1], abs=1e-12)


def test_macro_f1_on_a_resample_matches_sklearn():
    # A replicate is a vector of document counts; both the weighted (hierarchical) and scipy statistics must equal
    # sklearn on the materialized resample, where classes absent from it drop out of the mean.
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 4, 30)
    predictions = np.where(rng.random(30) < 0.6, labels, rng.integers(0, 4, 30))
    data = stats._prepare((predictions, labels), "macro_f1")
    for _ in range(5):
        index = rng.integers(0, 30, 30)
        weights = np.bincount(index, minlength=30)[None, :].astype(float)
        expected = f1_score(labels[index], predictions[index], average="macro", zero_division=0)
        assert stats._per_seed(data, weights)[0, 0] == pytest.approx(expected, abs=1e-12)
        scipy_value = stats._scipy_statistic([data])(data.predictions[0][index], data.labels[0][index])
        assert scipy_value == pytest.approx(expected, abs=1e-12)


def test_macro_f1_of_a_batch_of_replicates_and_seeds_matches_sklearn():
    # Both statistics count every replicate (and seed) of a batch at once; each entry must be sklearn's value.
    rng = np.random.default_rng(12)
    labels = rng.integers(0, 5, 40)
    predictions = np.where(rng.random((3, 40)) < 0.5, labels, rng.integers(0, 6, (3, 40)))
    data = stats._prepare((predictions, labels), "macro_f1")
    index = rng.integers(0, 40, (4, 40))
    weights = np.stack([np.bincount(row, minlength=40) for row in index]).astype(float)
    expected = [
        [f1_score(labels[row], seed[row], average="macro", zero_division=0) for seed in predictions] for row in index
    ]
    np.testing.assert_allclose(stats._per_seed(data, weights), expected, atol=1e-12)
    first = stats._prepare((predictions[0], labels), "macro_f1")
    batched = stats._scipy_statistic([first])(predictions[0][index], labels[index], axis=-1)
    np.testing.assert_allclose(batched, np.asarray(expected)[:, 0], atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Paired differences
# ---------------------------------------------------------------------------------------------------------------------


def superset_case(n_seeds: int) -> tuple[np.ndarray, np.ndarray]:
    """Baseline right on 150 of 300 documents; the variant right on those and 40 more (per seed)."""
    rng = np.random.default_rng(11)
    baseline = np.zeros((n_seeds, 300))
    variant = np.zeros((n_seeds, 300))
    for row in range(n_seeds):
        order = rng.permutation(300)
        baseline[row, order[:150]] = 1
        variant[row, order[:190]] = 1
    return variant, baseline


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_strict_superset_difference_excludes_zero(n_seeds):
    variant, baseline = superset_case(n_seeds)
    difference = paired_difference(variant, baseline, n_resamples=FAST)
    assert difference.estimate == pytest.approx(40 / 300)
    assert difference.excludes_zero and difference.low > 0.08
    assert difference.p_value < 0.01


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_few_swaps_both_ways_include_zero(n_seeds):
    baseline = bernoulli(0.7, (n_seeds, 300), seed=12)
    variant = baseline.copy()
    for row in range(n_seeds):
        right, wrong = np.flatnonzero(baseline[row] == 1), np.flatnonzero(baseline[row] == 0)
        variant[row, right[:4]] = 0
        variant[row, wrong[:3]] = 1
    difference = paired_difference(variant, baseline, n_resamples=FAST)
    assert difference.estimate == pytest.approx(-1 / 300)
    assert difference.low < 0 < difference.high and not difference.excludes_zero
    assert difference.p_value > 0.5


def test_identical_runs_differ_by_exactly_zero():
    correct = bernoulli(0.6, (3, 100), seed=13)
    difference = paired_difference(correct, correct, n_resamples=FAST)
    assert (difference.estimate, difference.low, difference.high, difference.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert difference.paired_seeds


@pytest.mark.parametrize("seeds", [(3, 1), (3, 2), (5, 3)])
def test_rounding_noise_is_no_difference(seeds):
    """A mean over 3 seeds of 0.1 is 0.1 + 1.4e-17: an exactly-zero difference must not be marked as excluding zero,
    nor print as -0.000 (found on constant per-document scores, 3 seeds against 1)."""
    variant, baseline = np.full((seeds[0], 1), 0.1), np.full((seeds[1], 1), 0.1)
    difference = paired_difference(variant, baseline, n_resamples=500)
    assert (difference.estimate, difference.low, difference.high, difference.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not difference.excludes_zero and "*" not in format_difference(difference)
    assert Difference(1e-13, 1e-13, 1e-13, 1.0).excludes_zero is False
    assert Difference(2e-12, 2e-12, 2e-12, 1.0).excludes_zero is True


def test_seeds_are_paired_by_value():
    correct = bernoulli(0.6, (3, 100), seed=14)
    shuffled = correct[[2, 0, 1]]
    paired = paired_difference(correct, shuffled, variant_seeds=[1, 2, 3], baseline_seeds=[3, 1, 2], n_resamples=FAST)
    assert paired.paired_seeds and (paired.low, paired.high) == (0.0, 0.0)
    # Different seed values: the seeds are resampled independently, so seed noise shows up in the interval.
    unpaired = paired_difference(
        correct, shuffled, variant_seeds=[1, 2, 3], baseline_seeds=[4, 5, 6], n_resamples=FAST
    )
    assert not unpaired.paired_seeds and unpaired.low < 0 < unpaired.high


def test_deterministic_baseline_counts_as_one_seed():
    variant, baseline = superset_case(3)
    difference = paired_difference(variant, baseline[0], n_resamples=FAST)
    assert not difference.paired_seeds
    assert difference.estimate == pytest.approx(40 / 300)
    assert difference.excludes_zero


def test_macro_f1_difference():
    rng = np.random.default_rng(15)
    labels = rng.integers(0, 2, 300)
    good = np.where(rng.random((2, 300)) < 0.9, labels, 1 - labels)
    bad = np.where(rng.random((2, 300)) < 0.6, labels, 1 - labels)
    difference = paired_difference((good, labels), (bad, labels), metric="macro_f1", n_resamples=FAST)
    expected = np.mean([f1_score(labels, row, average="macro") for row in good]) - np.mean(
        [f1_score(labels, row, average="macro") for row in bad]
    )
    assert difference.estimate == pytest.approx(expected, abs=1e-12)
    assert difference.excludes_zero


def test_difference_table_and_interval_table():
    variant, baseline = superset_case(3)
    data = {
        "learned": {128: baseline, 512: baseline},
        "alibi": {128: variant, 512: baseline},
        "tfidf": {128: baseline[0]},
    }
    differences = difference_table(data, "learned", n_resamples=FAST)
    assert set(differences) == {"alibi", "tfidf"} and set(differences["tfidf"]) == {128}
    assert differences["alibi"][128].excludes_zero and not differences["alibi"][512].excludes_zero
    intervals = interval_table(data, n_resamples=FAST)
    assert intervals["alibi"][128].estimate == pytest.approx(190 / 300)
    with pytest.raises(ValueError, match="baseline 'rope' is not a row"):
        difference_table(data, "rope")


# ---------------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------------


def test_mismatched_document_counts_raise():
    with pytest.raises(ValueError, match="variant has 300 documents but baseline has 299.*same documents"):
        paired_difference(np.ones((3, 300)), np.ones((3, 299)))


@pytest.mark.parametrize("empty", [np.array([]), np.zeros((0, 10)), np.zeros((3, 0))])
def test_empty_data_raises(empty):
    with pytest.raises(ValueError, match="empty"):
        cell_interval(empty)
    with pytest.raises(ValueError, match="empty"):
        paired_difference(empty, np.ones(10))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cell_interval(np.ones(5), metric="macro_f1"), "macro_f1 needs \\(predictions, labels\\)"),
        (lambda: cell_interval(np.ones(5), metric="f2"), "metric must be"),
        (lambda: cell_interval((np.ones(5), np.ones(4))), "predictions cover 5 documents but labels 4"),
        (lambda: cell_interval((np.ones((3, 5)), np.ones((2, 5)))), "labels have 2 rows for 3 seeds"),
        (lambda: cell_interval(np.ones((2, 3, 4))), "shape \\(n_docs,\\) or \\(n_seeds, n_docs\\)"),
        (lambda: cell_interval(np.array([1.0, np.nan])), "NaN"),
        (lambda: cell_interval(np.ones(5), level=95), "level"),
        (lambda: cell_interval(np.ones(5), n_resamples=0), "n_resamples"),
        (lambda: paired_difference(np.ones((2, 5)), np.ones((2, 5)), variant_seeds=[1]), "lists 1 seeds"),
        (lambda: paired_difference(np.ones((2, 5)), np.ones(5), variant_seeds=[1, 1], baseline_seeds=[0]), "repeated"),
    ],
)
def test_invalid_input_raises(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------------------------------
# Fresh study vs reference
# ---------------------------------------------------------------------------------------------------------------------


def test_compare_tables_classifies_every_kind_of_cell():
    variant, baseline = superset_case(3)
    one_less = baseline.copy()  # one right answer lost per seed: not exact, well within noise
    for row in one_less:
        row[np.flatnonzero(row)[0]] = 0
    reference = {
        "learned": {128: 0.68, 512: Interval(0.673, 0.62, 0.72), 2048: {"value": 0.68, "low": 0.64, "high": 0.72}},
        "rope": {128: Cell(0.5, data=baseline), 2048: Cell(0.68, 0.64, 0.72)},
        "t5": {128: Cell(0.5, data=baseline), 512: 0.6},
        "alibi": {128: 0.57},
    }
    fresh = {
        "learned": {128: 0.68 + 1e-12, 512: 0.65, 2048: {"mean": 0.70}},
        "rope": {128: Cell(float(one_less.mean()), data=one_less), 2048: 0.61},
        "t5": {128: Cell(190 / 300, data=variant), 512: Cell(0.62, 0.55, 0.70)},
        "nezha": {128: 0.5},
    }
    result = compare_tables(fresh, reference, n_resamples=FAST)
    verdicts = {(cell.variant, cell.length): cell.verdict for cell in result.cells}
    assert verdicts == {
        ("learned", 128): "exact",
        ("learned", 512): "noise",  # inside the reference interval
        ("learned", 2048): "noise",  # JSON-style mapping
        ("rope", 128): "noise",  # per-document data on both sides, difference includes zero
        ("rope", 2048): "differ",  # outside the reference interval
        ("t5", 128): "differ",  # per-document data on both sides, difference excludes zero
        ("t5", 512): "noise",  # the reference is a bare number inside the fresh interval
    }
    assert result.only_reference == [("alibi", 128)] and result.only_fresh == [("nezha", 128)]
    assert not result.ok
    summary = result.markdown()
    assert summary.startswith("1 cell agrees exactly, 4 within noise, 2 differ: ")
    assert "rope@2048 0.61 vs 0.68 [0.64, 0.72]" in summary
    assert "t5@128 0.63 vs 0.50 (difference +0.133 [" in summary
    assert "Only in the fresh table: nezha@128" in summary and "Only in the reference table: alibi@128" in summary


def test_compare_tables_pairs_only_the_same_documents():
    """Per-document data on both sides is paired only when the labels match; another split (same size, other labels)
    or another test set size takes the interval path instead of being paired by position."""
    labels = np.arange(300) % 2
    predictions = np.stack([labels] * 3)
    predictions[:, :60] = 1 - predictions[:, :60]  # 0.8 accuracy
    reference = {"rope": {2048: Cell(0.8, 0.75, 0.85, data=(predictions, labels), seeds=(0, 1, 2))}}
    same = compare_tables({"rope": {2048: Cell(0.81, data=(predictions, labels), seeds=(0, 1, 2))}}, reference)
    assert same.cells[0].difference is not None
    for other in (1 - labels, labels[:250]):
        fresh = {"rope": {2048: Cell(0.81, data=(predictions[:, : other.size], other), seeds=(0, 1, 2))}}
        cell = compare_tables(fresh, reference, n_resamples=FAST).cells[0]
        assert cell.difference is None and cell.interval == Interval(0.8, 0.75, 0.85) and cell.verdict == "noise"


def test_compare_tables_summary_wording_and_computed_interval():
    reference = {"rope": {2048: Cell(0.7, data=bernoulli(0.7, (3, 300), seed=16))}}
    far = compare_tables({"rope": {2048: 0.2}}, reference, n_resamples=FAST)
    assert far.markdown().startswith("0 cells agree exactly, 0 within noise, 1 differs: rope@2048 0.20 vs 0.70 [")
    near = compare_tables({"rope": {2048: far.cells[0].interval.estimate + 0.01}}, reference, n_resamples=FAST)
    assert near.ok and near.markdown() == "0 cells agree exactly, 1 within noise, 0 differ."
    bare = compare_tables({"rope": {2048: 0.69}}, {"rope": {2048: 0.7}})
    assert bare.cells[0].verdict == "differ" and "(no interval)" in bare.markdown()
    with pytest.raises(ValueError, match="cannot read a table cell"):
        compare_tables({"rope": {2048: "0.7"}}, {"rope": {2048: 0.7}})


# ---------------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------------


def test_formatting():
    assert format_interval(Interval(0.7123, 0.6612, 0.7571)) == "0.712 [0.66, 0.76]"
    assert format_difference(Difference(0.0412, 0.0109, 0.0702, 0.01)) == "+0.041 [+0.01, +0.07] *"
    assert format_difference(Difference(-0.012, -0.05, 0.03, 0.6)) == "-0.012 [-0.05, +0.03]"


def test_markdown_tables():
    table = {
        "learned": {128: Interval(0.68, 0.63, 0.73), 512: Interval(0.67, 0.62, 0.72)},
        "tfidf": {512: Interval(0.8, 0.75, 0.85)},
    }
    text = markdown_interval_table(table, train_length=128)
    assert text.splitlines() == [
        "| accuracy [95% CI] | 128 (trained) | 512 |",
        "|---|---|---|",
        "| learned | 0.680 [0.63, 0.73] | 0.670 [0.62, 0.72] |",
        "| tfidf |  | 0.800 [0.75, 0.85] |",
    ]
    differences = {"alibi": {128: Difference(-0.11, -0.16, -0.06, 0.001), 512: Difference(0.01, -0.04, 0.06, 0.7)}}
    text = markdown_difference_table(differences, "learned", metric="macro-F1")
    lines = text.splitlines()
    assert lines[0] == "| macro-F1 - learned | 128 | 512 |"
    assert lines[2] == "| alibi | -0.110 [-0.16, -0.06] * | +0.010 [-0.04, +0.06] |"
    assert "95% interval excludes zero" in text
    table["alibi"] = {128: Interval(0.57, 0.52, 0.62), 512: Interval(0.68, 0.63, 0.73)}
    differences["tfidf"] = {512: Difference(0.13, 0.08, 0.18, 0.001)}
    lines = stats.markdown_glance_table(table, differences, "learned", train_length=128).splitlines()
    assert lines[:5] == [
        "| accuracy [95% CI] | 128 (trained) | 512 | 512 - baseline |",
        "|---|---|---|---|",
        "| learned (baseline) | 0.680 [0.63, 0.73] | 0.670 [0.62, 0.72] |  |",
        "| tfidf |  | 0.800 [0.75, 0.85] | +0.130 [+0.08, +0.18] * |",
        "| alibi | 0.570 [0.52, 0.62] | 0.680 [0.63, 0.73] | +0.010 [-0.04, +0.06] |",  # the longest length's
    ]
    assert "difference to learned excludes zero" in lines[-1]
    # Differences only at 128: the column is the longest length that has them; no rows, no table.
    lines = stats.markdown_glance_table(table, {"alibi": {128: differences["alibi"][128]}}, "learned").splitlines()
    assert lines[0].endswith("| 128 - baseline |") and lines[4].endswith("| -0.110 [-0.16, -0.06] * |")
    assert stats.markdown_glance_table({}, {}, "learned") == ""


@pytest.mark.parametrize("bands", [True, False])
def test_plot_intervals(tmp_path, bands):
    table = {
        "learned": {128: Interval(0.68, 0.63, 0.73), 512: Interval(0.67, 0.62, 0.72), 2048: Interval(0.68, 0.6, 0.75)},
        "alibi": {128: Interval(0.57, 0.5, 0.63), 2048: Interval(0.53, 0.47, 0.6)},
    }
    path = tmp_path / "plot.png"
    figure = plot_intervals(table, path, train_length=128, title="study", bands=bands)
    assert path.stat().st_size > 1000
    ax = figure.axes[0]
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [128]
    assert "training length (128)" in [text.get_text() for text in ax.get_legend().get_texts()]


def _rows(n_rows: int) -> dict:
    return {
        f"row {i}": {n: Interval(0.5 + i / 100, 0.45 + i / 100, 0.55 + i / 100) for n in (128, 512, 2048)}
        for i in range(n_rows)
    }


@pytest.mark.parametrize(("n_rows", "panels"), [(3, 1), (8, 1), (9, 2), (15, 3), (30, 5)])
def test_interval_panels_split_the_rows_and_repeat_the_references(tmp_path, n_rows, panels):
    table = _rows(n_rows)
    path = tmp_path / "panels.png"
    figure = plot_interval_panels(table, path, references=["row 0", "row 1", "absent"], train_length=128)
    assert path.read_bytes()[:4] == b"\x89PNG"
    visible = [ax for ax in figure.axes if ax.get_visible()]
    assert len(visible) == panels and len(figure.axes) == (1 if panels == 1 else 2 * math.ceil(panels / 2))
    shown = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in visible]
    assert all(names[:2] == ["row 0", "row 1"] for names in shown)  # the references in every panel
    others = [name for names in shown for name in names[2:] if name.startswith("row")]
    assert others == [f"row {i}" for i in range(2, n_rows)]  # every other row once, in table order
    assert all(len([n for n in names[2:] if n.startswith("row")]) <= 6 for names in shown)
    assert len({ax.get_ylim() for ax in visible}) == 1  # one y-axis for all panels


def test_difference_forest_marks_the_intervals_that_exclude_zero(tmp_path):
    from matplotlib.colors import to_rgba

    table = {
        "better": {128: Difference(0.1, 0.05, 0.15, 0.001), 2048: Difference(0.02, -0.01, 0.05, 0.2)},
        "worse": {128: Difference(-0.1, -0.15, -0.05, 0.001), 2048: Difference(-0.2, -0.3, -0.1, 0.001)},
    }
    path = tmp_path / "forest.png"
    figure = plot_differences(table, path, baseline="learned")
    assert path.read_bytes()[:4] == b"\x89PNG" and len(figure.axes) == 2
    assert [ax.get_title() for ax in figure.axes] == ["128 tokens", "2048 tokens"]
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["better", "worse"]
    markers = [line for line in figure.axes[1].get_lines() if line.get_marker() == "o"]
    filled = [to_rgba(line.get_markerfacecolor()) != to_rgba("white") for line in markers]
    assert filled == [False, True]  # 2048: "better" includes zero (hollow), "worse" excludes it (filled)
    assert [float(line.get_xdata()[0]) for line in markers] == [0.02, -0.2]


@pytest.mark.parametrize(("k", "n"), [(0, 40), (1, 40), (20, 40), (39, 40), (40, 40), (3, 7), (150, 300)])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_score_interval_is_scipys_wilson_interval_for_counts(k, n, level):
    from scipy import stats as scipy_stats

    expected = scipy_stats.binomtest(k, n).proportion_ci(level, method="wilson")
    low, high = stats.score_interval(k / n, n, level)
    assert low == pytest.approx(expected.low, abs=1e-12) and high == pytest.approx(expected.high, abs=1e-12)


def test_score_interval_shrinks_with_n_and_covers_shared_credit():
    widths = [np.subtract(*stats.score_interval(0.5, n)[::-1]) for n in (10, 40, 160)]
    assert widths[0] > widths[1] > widths[2] and widths[1] == pytest.approx(widths[0] / 2, rel=0.25)
    low, high = stats.score_interval(0.4125, 40)  # 16 hits and a 3-way tie (1/3 + 1/3 + 1/3 -> 1 more hit, shared)
    assert 0.0 < low < 0.4125 < high < 1.0
    for bad in [(1.2, 40), (-0.1, 40), (0.5, 0), (0.5, 2.5), (0.5, True)]:
        with pytest.raises(ValueError, match="mean in \\[0, 1\\] and n >= 1"):
            stats.score_interval(*bad)
    with pytest.raises(ValueError, match="level"):
        stats.score_interval(0.5, 40, 1.0)
