"""Sweeps: several variants x seeds on the same data, split and budget; one table and one plot, with a baseline.

A sweep (`SweepConfig`) runs one `RunConfig` or `Seq2SeqConfig` per variant and seed (finished runs are reused only
with `resume`: an interrupted sweep continues where it stopped), aggregates the mean and spread over seeds, adds the
TF-IDF + logistic-regression baseline, and writes one `results.json`, one `results.md` and one `results.png` (metric vs
evaluation length, one line per variant, training length marked). From the runs' per-document predictions it adds a
95% bootstrap interval to every cell and each variant's paired difference to the baseline row (`stats`), on all test
documents and on the long ones alone (`long_documents`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..hub.files import atomic_write, read_json
from ..hub.publish import push_to_hub, save_for_hub
from . import stats
from .adaptation import file_digest
from .classification import (
    classification_dataloaders,
    classification_scores,
    classification_splits,
    run_classification,
)
from .data import resolve_checkpoint, special_tokens
from .methods import RandomWindows
from .results import (
    aggregate,
    environment,
    git_revision,
    length_distribution,
    markdown_length_table,
    markdown_table,
    plot,
    write_json,
)
from .seq2seq import run_seq2seq, seq2seq_dataloaders
from .settings import SWEEP_KINDS, RunConfig, SweepConfig, settings_differences, slug
from .training import check_lengths

__all__ = [
    "SWEEP_KINDS",
    "SweepConfig",
    "analyse",
    "best_variant",
    "export_best_variant",
    "reproduction",
    "run_study",
    "study_length_table",
    "study_sweeps",
    "compare_with_reference",
    "comparison_table",
    "document_subsets",
    "document_table",
    "render",
    "NoInterimTables",
    "finished_sweep",
    "render_finished",
    "reuse_finished",
    "run_labels",
    "run_predictions",
    "run_sweep",
    "slug",
    "sweep_markdown",
    "evaluation_documents",
    "tfidf_baseline",
    "tfidf_rows",
    "check_comparisons",
    "comparison_label",
    "head_to_head",
]

# ---------------------------------------------------------------------------------------------------------------------
# Per-document predictions (what intervals, paired differences and the long-document subset are computed from)
# ---------------------------------------------------------------------------------------------------------------------


def _prediction_record(result: dict) -> tuple[dict, list[int] | None] | None:
    """The run's `{length: predictions}` of its reported mode and the test-split position of each entry."""
    found = result.get("predictions")
    if not isinstance(found, dict):
        return None
    mode = "chunked" if result.get("config", {}).get("eval_mode") == "chunked" else "single"
    per_length = found.get(mode) if isinstance(found.get(mode), dict) else found
    per_length = {k: v for k, v in per_length.items() if k.isdigit() and isinstance(v, list)}
    index = found.get("document_index", found.get("index"))
    return (per_length, index) if per_length else None


def _in_split_order(values: list, index: list[int] | None) -> list[int]:
    if index is None:
        return [int(v) for v in values]
    ordered = [0] * len(values)
    for position, value in zip(index, values):
        ordered[position] = int(value)
    return ordered


def run_predictions(result: dict) -> dict[str, list[int]] | None:
    """`{length: predicted labels}` of one run, in the order of the test split, or None when it has none.

    Read from the run's `results.json` key `"predictions"` (written by `run_classification`): `{"document_index":
    [test-split position of each entry], "labels": [...], "single": {"<length>": [...]}, "chunked": {...}}`, the mode
    being the run's `eval_mode` (`single` when it reports both); a flat `{"labels", "<length>": [...]}` is read too.
    """
    record = _prediction_record(result)
    if record is None:
        return None
    per_length, index = record
    return {length: _in_split_order(values, index) for length, values in per_length.items()}


def run_labels(result: dict) -> list[int] | None:
    """The test labels a run stored with its predictions, in test-split order, if any."""
    found = result.get("predictions")
    if not isinstance(found, dict) or "labels" not in found:
        return None
    return _in_split_order(found["labels"], found.get("document_index", found.get("index")))


def evaluation_documents(run: RunConfig, tokenizer) -> dict[str, list[int]]:
    """Labels and token counts (no special tokens) of the run's test documents, in test-split order."""
    _, test = classification_splits(run)
    ids = tokenizer(list(test["text"]), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return {"labels": [int(x) for x in test["label"]], "n_tokens": [len(i) for i in ids]}


# ---------------------------------------------------------------------------------------------------------------------
# TF-IDF + logistic regression baseline (scikit-learn)
# ---------------------------------------------------------------------------------------------------------------------


def tfidf_rows(train_length: int, windows: Sequence[int] = ()) -> tuple[str, ...]:
    """The names of the TF-IDF rows: trained on full texts, on texts cut at the training length, and for each count
    in `windows` on that many random training-length windows of each text."""
    rows = ("TF-IDF+LR (train full)", f"TF-IDF+LR (train @{train_length})")
    return rows + tuple(f"TF-IDF+LR (train {n} random {train_length}-token window{'s' * (n > 1)})" for n in windows)


def tfidf_baseline(
    run: RunConfig, tokenizer, windows: Sequence[int] = (), seeds: Sequence[int] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """TF-IDF 1-2-grams + logistic regression on the run's split, test documents truncated at each length.

    Rows: trained on full training texts, and trained on texts truncated at the training length (what the
    fine-tuned models saw); for each count in `windows`, also trained on that many random training-length windows of
    each text, drawn as `train_windows="random"` draws them in a run's first epoch (the text a model fine-tuned on
    random windows reads), which separates what the training text holds from what the model makes of it.
    Truncation uses the model's tokenizer, so "512" means the same text for both. Each cell has the scores and
    `"predictions"`: the predicted label of every test document, in test-split order (for intervals).

    The window rows depend on the seed: they are drawn for each of `seeds` (default: the run's seed), as each seed
    of a fine-tune draws its own, so that they pair with the fine-tunes seed by seed. Their cells hold the scores'
    mean over seeds, `"by_seed"` (each score per seed), `"seeds"` and one list of predictions per seed.
    """
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError as error:
        raise ImportError("The TF-IDF baseline needs scikit-learn: pip install scikit-learn") from error
    train, test = classification_splits(run)
    train_texts, train_labels, test_labels = list(train["text"]), list(train["label"]), list(test["label"])
    specials = sum(len(t) for t in special_tokens(tokenizer))
    train_ids = tokenizer(train_texts, add_special_tokens=False)["input_ids"]
    test_ids = tokenizer(list(test["text"]), add_special_tokens=False)["input_ids"]

    def truncate(ids: list[list[int]], length: int) -> list[str]:
        return [tokenizer.decode(i[: length - specials]) for i in ids]

    # Every row reads the same test inputs: cut once per length.
    test_inputs = {str(n): truncate(test_ids, n) for n in run.eval_lengths} | {"full": list(test["text"])}
    names = tfidf_rows(run.train_length, windows)

    def cells(texts: list[str], labels: list[int]) -> dict[str, dict[str, Any]]:
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        classifier = LogisticRegression(max_iter=2000, C=10.0)
        classifier.fit(vectorizer.fit_transform(texts), labels)
        predicted = {n: torch.tensor(classifier.predict(vectorizer.transform(x))) for n, x in test_inputs.items()}
        return {
            n: {**classification_scores(found, torch.tensor(test_labels)), "predictions": [int(x) for x in found]}
            for n, found in predicted.items()
        }

    rows = {names[0]: cells(train_texts, train_labels)}
    rows[names[1]] = cells(truncate(train_ids, run.train_length), train_labels)
    documents = [{"ids": i, "label": label} for i, label in zip(train_ids, train_labels)]
    seeds = list(seeds) if seeds is not None else [run.seed]
    for name, count in zip(names[2:], windows):
        per_seed = []
        for seed in seeds:
            # Epoch 0's windows: what a run with this seed reads in its first epoch.
            drawn = RandomWindows(documents, run.train_length - specials, count, seed)
            items = [drawn[i] for i in range(len(drawn))]
            texts = [tokenizer.decode(item["ids"]) for item in items]
            per_seed.append(cells(texts, [item["label"] for item in items]))
        rows[name] = {n: _over_seeds([scored[n] for scored in per_seed], seeds) for n in test_inputs}
    return rows


def _over_seeds(cells: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """One TF-IDF cell per seed as one cell: mean scores, each score per seed, the seeds and their predictions."""
    scores = [k for k in cells[0] if k not in ("predictions", "n")]
    merged: dict[str, Any] = {k: round(float(np.mean([c[k] for c in cells])), 5) for k in scores}
    merged["n"] = cells[0]["n"]
    merged["by_seed"] = {k: [c[k] for c in cells] for k in scores}
    return merged | {"seeds": list(seeds), "predictions": [c["predictions"] for c in cells]}


# ---------------------------------------------------------------------------------------------------------------------
# Intervals and paired differences of a sweep's table
# ---------------------------------------------------------------------------------------------------------------------

INTERVAL_METRICS = ("accuracy", "macro_f1")


def document_table(summary: dict, keep: list[int] | None = None) -> tuple[dict, dict[str, list[int]]]:
    """Per-document data of every row of a sweep summary: `{row: {length: (predictions, labels)}}` and row seeds.

    Variants stack their seeds (`(n_seeds, n_docs)`, seeds in sweep order); a baseline row is one seed, unless it
    was drawn per seed (the TF-IDF window rows), when it stacks its seeds too. Only cells whose every run stored
    predictions are kept. `keep` restricts to these test-document positions (a subset).
    """
    documents = summary.get("documents") or {}
    labels = np.asarray(documents.get("labels", []))
    if labels.size == 0:
        return {}, {}
    index = np.arange(labels.size) if keep is None else np.asarray(keep, dtype=int)
    table: dict[str, dict[int, tuple]] = {}
    seeds: dict[str, list[int]] = {}
    by_variant: dict[str, list[dict]] = {}
    for run in summary["runs"]:
        by_variant.setdefault(run["variant"], []).append(run)
    for variant, runs in by_variant.items():
        predictions = [run_predictions(run) or {} for run in runs]
        for run in runs:
            stored = run_labels(run)
            if stored is not None and list(stored) != labels.tolist():
                raise ValueError(
                    f"The test labels stored by {variant} (seed {run['config']['seed']}) are not the sweep's test "
                    "labels in test-split order: its predictions cannot be paired with the other rows."
                )
        lengths = set.intersection(*(set(p) for p in predictions))
        cells = {}
        for length in sorted(lengths, key=_length_key):
            rows = np.asarray([p[length] for p in predictions])
            if rows.shape[1] == labels.size and length.isdigit():
                cells[int(length)] = (rows[:, index], labels[index])
        if cells:
            table[variant], seeds[variant] = cells, [run["config"]["seed"] for run in runs]
    for name, per_length in (summary.get("baseline") or {}).items():
        cells = {
            int(length): (np.asarray(cell["predictions"])[..., index], labels[index])
            for length, cell in per_length.items()
            if length.isdigit() and "predictions" in cell and _same_size(name, cell["predictions"], labels)
        }
        if cells:
            table[name] = cells
            found = {tuple(cell["seeds"]) for cell in per_length.values() if "seeds" in cell}
            if found:  # rows drawn per seed (TF-IDF on random windows) pair with the fine-tunes seed by seed
                seeds[name] = list(found.pop())
    return table, seeds


def _same_size(row: str, predictions: list, labels: np.ndarray) -> bool:
    """A baseline row's predictions (one list, or one per seed) must cover the sweep's test documents one to one
    (they are paired by position)."""
    sizes = {len(p) for p in predictions} if predictions and isinstance(predictions[0], list) else {len(predictions)}
    if sizes != {labels.size}:
        stored = " or ".join(map(str, sorted(sizes)))
        raise ValueError(
            f"The baseline row {row!r} stored {stored} predictions for {labels.size} test documents: its "
            "predictions cannot be paired with the other rows."
        )
    return True


def _length_key(length: str) -> tuple[int, str]:
    return (int(length), "") if length.isdigit() else (1 << 30, length)


def document_subsets(summary: dict, long_documents: int) -> dict[str, list[int] | None]:
    """`{"all": None}`, and the positions of the test documents over `long_documents` tokens when asked."""
    subsets: dict[str, list[int] | None] = {"all": None}
    n_tokens = (summary.get("documents") or {}).get("n_tokens")
    if long_documents and n_tokens:
        subsets[f"over {long_documents} tokens"] = [i for i, n in enumerate(n_tokens) if n > long_documents]
    return subsets


def analyse(summary: dict, sweep: SweepConfig) -> dict:
    """Intervals of every cell and paired differences to the baseline row, per document subset and metric.

    Returns `{subset: {"n_docs", "intervals": {metric: {row: {length: Interval fields}}}, "differences": ...}}`
    (JSON-ready); empty when no run stored per-document predictions.
    """
    baseline_row = sweep.baseline_variant or sweep.runs()[0].variant
    options = {"n_resamples": sweep.n_resamples, "seed": 0}
    analysis = {}
    for subset, keep in document_subsets(summary, sweep.long_documents).items():
        table, seeds = document_table(summary, keep)
        if not table or (keep is not None and len(keep) < 2):
            continue
        entry: dict[str, Any] = {"n_docs": len(keep) if keep is not None else len(summary["documents"]["labels"])}
        entry["intervals"], entry["differences"] = {}, {}
        for metric in INTERVAL_METRICS:
            intervals = stats.interval_table(table, metric=metric, **options)
            entry["intervals"][metric] = _to_json(intervals)
            if baseline_row in table:
                differences = stats.difference_table(table, baseline_row, metric=metric, seeds=seeds, **options)
                entry["differences"][metric] = _to_json(differences)
            if sweep.comparisons:
                entry.setdefault("comparisons", {})[metric] = _to_json(
                    head_to_head(table, sweep.comparisons, metric=metric, seeds=seeds, **options)
                )
        entry["baseline_row"] = baseline_row if baseline_row in table else None
        analysis[subset] = entry
    return analysis


def head_to_head(
    table: dict, comparisons: list[dict], *, metric: str, seeds: dict, **options: Any
) -> dict[str, dict[int, stats.Difference]]:
    """Each comparison's row minus its reference (`stats.difference_table` on the two rows), labelled
    "row minus reference"; a comparison with a row that stored no predictions is left out."""
    found = {}
    for comparison in comparisons:
        row, reference = comparison_rows(comparison)
        if row in table and reference in table:
            pair = {reference: table[reference], row: table[row]}
            differences = stats.difference_table(pair, reference, metric=metric, seeds=seeds, **options)
            found[comparison_label(comparison)] = differences[row]
    return found


def comparison_rows(comparison: dict) -> tuple[str, str]:
    """The two rows a head-to-head comparison names: (row, reference)."""
    return comparison["row"], comparison["reference"]


def comparisons_without(comparisons: list[dict], rows: list[str]) -> list[dict]:
    """The comparisons that name none of `rows` (rows a sweep leaves out, or has not finished)."""
    return [c for c in comparisons if not set(rows) & set(comparison_rows(c))]


def comparison_label(comparison: dict) -> str:
    """How a head-to-head row is named in tables: "row minus reference"."""
    return f"{comparison['row']} minus {comparison['reference']}"


def _to_json(table: dict) -> dict:
    return {row: {str(n): dataclasses.asdict(value) for n, value in cells.items()} for row, cells in table.items()}


def _intervals(table: dict) -> dict[str, dict[int, stats.Interval]]:
    return {row: {int(n): stats.Interval(**v) for n, v in cells.items()} for row, cells in table.items()}


def _differences(table: dict) -> dict[str, dict[int, stats.Difference]]:
    return {row: {int(n): stats.Difference(**v) for n, v in cells.items()} for row, cells in table.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Fresh results against a committed reference
# ---------------------------------------------------------------------------------------------------------------------


def comparison_table(summary: dict, metric: str = "accuracy") -> dict[str, dict[int, dict]]:
    """The sweep's table as `stats.compare_tables` reads it: value, interval and per-document data where known."""
    table: dict[str, dict[int, dict]] = {}
    for variant, per_length in summary["summary"].items():
        for length, metrics in per_length.items():
            if length.isdigit() and metric in metrics:
                table.setdefault(variant, {})[int(length)] = {"value": float(np.mean(metrics[metric]))}
    for name, per_length in (summary.get("baseline") or {}).items():
        for length, cell in per_length.items():
            if length.isdigit():
                table.setdefault(name, {})[int(length)] = {"value": float(cell[metric])}
    documents, seeds = document_table(summary)
    intervals = ((summary.get("analysis") or {}).get("all") or {}).get("intervals", {}).get(metric, {})
    for row, cells in table.items():
        for length, cell in cells.items():
            if row in documents and length in documents[row]:
                predictions, labels = documents[row][length]
                cell.update(predictions=predictions, labels=labels, seeds=seeds.get(row))
            bounds = intervals.get(row, {}).get(str(length))
            if bounds:
                cell.update(low=bounds["low"], high=bounds["high"])
    return table


def compare_with_reference(
    summary: dict, reference: dict | str | Path, metric: str = "accuracy", n_resamples: int = 10000
) -> stats.TableComparison:
    """Compare a sweep's table with a reference sweep's (a `results.json` path or its dict), cell by cell.

    Cells agree exactly, within noise (paired bootstrap over the same test documents when both stored predictions,
    else the reference's interval, else the fresh cell's interval around the reference value), or differ.
    """
    if not isinstance(reference, dict):
        reference = json.loads(Path(reference).read_text())
    if reference.get("kind") != "sweep":
        raise ValueError(f"The reference must be a sweep's results.json, got kind {reference.get('kind')!r}.")
    return stats.compare_tables(
        comparison_table(summary, metric), comparison_table(reference, metric), metric=metric, n_resamples=n_resamples
    )


# ---------------------------------------------------------------------------------------------------------------------
# Running and rendering a sweep
# ---------------------------------------------------------------------------------------------------------------------


def run_sweep(
    sweep: SweepConfig,
    get_dataloaders: Callable | None = None,
    runner: Callable | None = None,
    on_run_finished: Callable | None = None,
) -> dict:
    """Run every run of the sweep, then write the summary (table with intervals, differences, plot).

    A run whose `results.json` is already on disk is reused only when `sweep.resume` (printed per run; a finished run
    with other settings is refused, `reuse_finished`); without `resume` the sweep refuses to start over finished runs
    rather than overwrite them. `runner` (one run config -> its results dict) replaces the recipe's
    run, for tests; `on_run_finished(run, results)` is called after each run that trained (e.g. to commit it).
    """
    from transformers import AutoTokenizer

    git_revision()  # the revision of the code this process imported
    runs = sweep.runs()
    runner = runner or _runner(sweep.kind, get_dataloaders)
    if sweep.baseline_variant and sweep.baseline_variant not in {run.variant for run in runs}:
        raise ValueError(
            f"baseline_variant {sweep.baseline_variant!r} is not a variant of the sweep: "
            f"{sorted({run.variant for run in runs})}."
        )
    check_comparisons(sweep)
    _refuse_finished(runs, sweep.resume)
    if sweep.kind == "classification":
        _check_all_lengths(runs)
    started, results = time.perf_counter(), []
    for index, run in enumerate(runs):
        previous = reuse_finished(run, sweep.resume)
        status = "reused " + str(Path(run.output_dir) / "results.json") if previous else "running"
        print(f"[{index + 1}/{len(runs)}] {run.variant} seed {run.seed}: {status}", flush=True)
        results.append(previous or runner(run))
        if previous is None and on_run_finished is not None:
            on_run_finished(run, results[-1])
    tokenizer = documents = baseline = None
    if sweep.kind == "classification":
        tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(runs[0].model))
        documents = evaluation_documents(runs[0], tokenizer)
        documents["length_distribution"] = length_distribution(documents["n_tokens"])
        if sweep.baseline:
            baseline = tfidf_baseline(runs[0], tokenizer, sweep.tfidf_windows, seeds=sweep.seeds)
    keep = ("variant", "config", "metrics", "train", "mlm", "patch_spec", "timings", "data", "note", "environment")
    keep += ("base_model", "dataset_info")  # each run's provenance, for model cards made from a sweep
    keep += ("predictions",)  # per-document predictions: intervals, paired differences, reference comparisons
    summary = {
        "kind": "sweep",
        "sweep": dataclasses.asdict(sweep),
        "summary": aggregate(results),
        "baseline": baseline,
        "documents": documents,
        "runs": [{k: r[k] for k in keep if k in r} for r in results],
        "environment": environment(),
    }
    summary["analysis"] = analyse(summary, sweep)
    summary["timings"] = {"total_seconds": round(time.perf_counter() - started, 1)}
    render(summary, Path(sweep.output_dir))
    return summary


def check_comparisons(sweep: SweepConfig) -> None:
    """Raise a ValueError unless every head-to-head comparison names rows the sweep makes (its variants, and its
    TF-IDF rows when it has them); the message lists the rows."""
    runs = sweep.runs()
    rows = {run.variant for run in runs}
    if sweep.kind == "classification" and sweep.baseline:
        rows.update(tfidf_rows(runs[0].train_length, sweep.tfidf_windows))
    for comparison in sweep.comparisons:
        unknown = [name for name in comparison_rows(comparison) if name not in rows]
        if unknown:
            raise ValueError(
                f"The comparison {comparison} names rows the sweep lacks: {unknown}. Rows: {sorted(rows)}."
            )


class NoInterimTables(ValueError):
    """A sweep's baseline row has not finished its first seed: there is nothing to tabulate yet."""


def finished_sweep(sweep: SweepConfig) -> SweepConfig:
    """The part of a stopped sweep that has finished, as a sweep whose every run is on disk: interim tables.

    Rows: the variants that finished the first seed (the baseline row among them: differences need it); seeds: the
    first, and each next one that every such row has finished. The description says what is missing; a sweep whose
    every run has finished is returned whole (only `resume` set), so its tables are the final ones. See
    `render_finished`.

    Raises:
        NoInterimTables: the baseline row has not finished its first seed, so there is no interim table to make.
    """

    def run_of(variant: dict, seed: int):
        return dataclasses.replace(sweep, variants=[variant], seeds=[seed]).runs()[0]

    def done(variant: dict, seed: int) -> bool:
        path = Path(run_of(variant, seed).output_dir) / "results.json"
        return path.is_file() and "metrics" in read_json(path, "Delete the damaged run folder; it is run again.")

    labels = [run_of(v, sweep.seeds[0]).variant for v in sweep.variants]
    baseline = labels.index(sweep.baseline_variant) if sweep.baseline_variant else 0
    if not done(sweep.variants[baseline], sweep.seeds[0]):
        raise NoInterimTables(
            f"The baseline row {labels[baseline]!r} of {sweep.output_dir} has not finished seed {sweep.seeds[0]}: "
            "no interim table yet."
        )
    kept = [i for i, v in enumerate(sweep.variants) if done(v, sweep.seeds[0])]
    seeds = [sweep.seeds[0]]
    for seed in sweep.seeds[1:]:  # a later seed joins once every kept row has finished it
        if not all(done(sweep.variants[i], seed) for i in kept):
            break
        seeds.append(seed)
    missing = [labels[i] for i in range(len(labels)) if i not in kept]
    if not missing and seeds == sweep.seeds:  # every run finished: these are the final tables, not interim ones
        return dataclasses.replace(sweep, resume=True)
    note = f"Interim tables: {len(kept)} of {len(labels)} rows, seeds {seeds} of {sweep.seeds}" + (
        f"; not finished yet: {', '.join(missing)}." if missing else "."
    )
    return dataclasses.replace(
        sweep,
        variants=[sweep.variants[i] for i in kept],
        comparisons=comparisons_without(sweep.comparisons, missing),
        seeds=seeds,
        resume=True,
        description=f"{note}\n\n{sweep.description}" if sweep.description else note,
    )


def render_finished(sweep: SweepConfig) -> dict:
    """Write the interim tables of a stopped sweep (`finished_sweep`) into its folder; nothing trains (every run is
    reused and checked against its recorded settings, as under `--resume`). Returns the interim summary."""

    def refuse(run) -> dict:
        raise RuntimeError(f"{run.output_dir} has not finished; interim tables train nothing.")

    return run_sweep(finished_sweep(sweep), runner=refuse)


def _runner(kind: str, get_dataloaders: Callable | None) -> Callable[[Any], dict]:
    if kind == "seq2seq":
        return lambda run: run_seq2seq(run, get_dataloaders=get_dataloaders or seq2seq_dataloaders)
    return lambda run: run_classification(run, get_dataloaders=get_dataloaders or classification_dataloaders)


def _check_all_lengths(runs: list[RunConfig]) -> None:
    """Refuse impossible lengths for every variant before the first one trains."""
    from transformers import AutoConfig

    for run in runs:
        config = AutoConfig.from_pretrained(resolve_checkpoint(run.model))
        check_lengths(config, run, [run.train_length, *run.eval_lengths, *run.mlm_eval_lengths])


def _refuse_finished(runs: list, resume: bool) -> None:
    """Without `resume`, refuse to start a sweep whose output folder already holds finished runs (never overwrite)."""
    finished = [str(Path(run.output_dir) / "results.json") for run in runs]
    finished = [path for path in finished if Path(path).is_file()]
    if finished and not resume:
        raise FileExistsError(
            f"{len(finished)} finished run(s) already in the output folder (first: {finished[0]}): pass --resume to "
            "reuse them, or choose a fresh --output_dir."
        )


def reuse_finished(run, resume: bool) -> dict | None:
    """The finished results of `run` on disk when `resume`, else None (also for a run that stopped early).

    The one place that decides whether a finished run is reused. A finished run whose recorded settings differ from
    the requested ones is refused (ValueError naming the differences), never silently reused or overwritten.
    """
    path = Path(run.output_dir) / "results.json"
    if not resume or not path.is_file():
        return None
    fix = "Delete it (the run is then trained again) or give the sweep another output_dir."
    previous = read_json(path, fix)
    if "metrics" not in previous:
        return None  # stopped early: train it (again)
    saved = previous.get("config") if isinstance(previous, dict) else None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} has no run config, so it cannot be reused. {fix}")
    requested = json.loads(json.dumps(run.to_dict(), default=str))
    differences = settings_differences(saved, requested, defaults=type(run).field_defaults())
    if differences:
        raise ValueError(
            f"{path} holds a finished run with other settings (saved -> requested): {'; '.join(differences)}. {fix}"
        )
    return previous


def render(summary: dict, folder: Path) -> None:
    """Write `results.json`, `results.md` and `results.png` of a sweep (also re-renders from a results.json).

    With per-document predictions `results.png` shows each row's 95% interval against length in panels of a few rows
    with the baseline and TF-IDF rows in each (`stats.plot_interval_panels`), `results_differences.png` each row's
    paired difference to the baseline (`stats.plot_differences`), and `results_long*.png` the same for the
    long-document subset, and `results*_head_to_head.png` the sweep's head-to-head comparisons; without predictions,
    one plot of the mean and spread over seeds.
    """
    sweep = SweepConfig.from_dict(summary["sweep"])
    base = sweep.runs()[0]
    write_json(summary, folder / "results.json")
    atomic_write(folder / "results.md", sweep_markdown(summary, base.eval_lengths, sweep.metric))
    title = f"{_subject(summary['runs'][0])}: trained at {base.train_length} tokens, {len(sweep.seeds)} seed(s)"
    analysis = summary.get("analysis") or {}
    if analysis:
        # Drawn in every panel: the baseline row and the first TF-IDF row (full texts).
        references = [analysis[next(iter(analysis))].get("baseline_row"), *list(summary.get("baseline") or {})[:1]]
        for subset, entry in analysis.items():
            stem = "results" if subset == "all" else "results_long"
            intervals = _intervals(entry["intervals"][sweep.metric])
            suffix = "" if subset == "all" else f" ({subset}: {entry['n_docs']} documents)"
            stats.plot_interval_panels(
                intervals,
                folder / f"{stem}.png",
                references=[row for row in references if row],
                train_length=base.train_length,
                metric=sweep.metric,
                title=title + suffix,
            )
            if entry.get("baseline_row") and sweep.metric in entry["differences"]:
                stats.plot_differences(
                    _differences(entry["differences"][sweep.metric]),
                    folder / f"{stem}_differences.png",
                    baseline=entry["baseline_row"],
                    metric=sweep.metric,
                    title=f"{title}{suffix}\n{sweep.metric} minus {entry['baseline_row']} (paired 95% intervals)",
                )
            comparisons = (entry.get("comparisons") or {}).get(sweep.metric)
            if comparisons:
                stats.plot_differences(
                    _differences(comparisons),
                    folder / f"{stem}_head_to_head.png",
                    baseline="its reference",
                    metric=sweep.metric,
                    title=f"{title}{suffix}\nhead to head: {sweep.metric}, each row minus its reference (paired)",
                )
        return
    plot(
        summary["summary"],
        base.eval_lengths,
        base.train_length,
        sweep.metric,
        folder / "results.png",
        title,
        summary.get("baseline"),
    )


def _subject(run: dict) -> str:
    config = run["config"]
    if "model" in config:
        return f"{Path(config['model']).name} on {Path(config['dataset']).name}"
    return f"small BART (not pretrained), task {config['task']}"


def _setting(run: dict, seeds: list[int]) -> str:
    config, data = run["config"], run.get("data")
    text = f"{_subject(run)}; trained at {config['train_length']} tokens, seeds {seeds}"
    if data:
        text += (
            f"; {data['train_examples']} training / {data['test_examples']} test documents (median test length "
            f"{data['test_tokens_median']} tokens). Each evaluation length truncates the test documents there"
        )
    if run.get("note"):
        text += f". {run['note']}"
    return text + ". Cells are the mean ± sample std over seeds (one value: one seed).\n"


def sweep_markdown(summary: dict, lengths: list[int], metric: str) -> str:
    """The sweep's Markdown: setting, length distribution, one table per metric (baseline rows included), intervals
    and paired differences to the baseline row per document subset, timings, environment."""
    sweep, runs = summary["sweep"], summary["runs"]
    seconds = {f"{r['variant']} (seed {r['config']['seed']})": r["timings"]["total_seconds"] for r in runs}
    first_metrics = next(iter(summary["summary"].values()))
    metrics = [metric] + sorted({m for per in first_metrics.values() for m in per} - {metric})
    text = [
        f"# {sweep['name']}\n",
        sweep["description"] + "\n" if sweep["description"] else "",
        _setting(runs[0], sweep["seeds"]),
    ]
    documents = summary.get("documents") or {}
    if documents.get("length_distribution"):
        name = Path(runs[0]["config"].get("dataset", "test")).name
        text.append(markdown_length_table({name: documents["length_distribution"]}))
    train_length = runs[0]["config"]["train_length"]
    text.append(_glance(summary, metric, train_length))
    text += [markdown_table(summary["summary"], lengths, m, summary.get("baseline")) for m in metrics]
    for subset, entry in (summary.get("analysis") or {}).items():
        text.append(
            f"## 95% intervals: {subset} ({entry['n_docs']} test documents)\n\nPercentile bootstrap over test "
            "documents (and over seeds where there are several); differences to the baseline row are paired over "
            "documents always, and over seeds where both rows ran the same seeds (TF-IDF rows on full or cut texts "
            "have none: their seeds are resampled independently; TF-IDF rows on random windows are drawn per seed).\n"
        )
        for name in (metric, *[m for m in INTERVAL_METRICS if m != metric]):
            if name not in entry["intervals"]:
                continue
            intervals = _intervals(entry["intervals"][name])
            text.append(stats.markdown_interval_table(intervals, metric=name, train_length=train_length))
            if entry.get("baseline_row") and name in entry["differences"]:
                differences = _differences(entry["differences"][name])
                text.append(
                    stats.markdown_difference_table(
                        differences, entry["baseline_row"], metric=name, train_length=train_length
                    )
                )
            text.append(_head_to_head_markdown(entry, name, train_length))
    text.append("Seconds per run (train + evaluate): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + ".\n")
    text.append(f"Environment: `{json.dumps(summary['environment'])}`\n")
    return "\n".join(t for t in text if t)


def _glance(summary: dict, metric: str, train_length: int) -> str:
    """The at-a-glance table of all test documents (intervals and the difference at the longest length), if any."""
    entry = (summary.get("analysis") or {}).get("all")
    if not entry or not entry.get("baseline_row") or metric not in entry["intervals"]:
        return ""
    table = stats.markdown_glance_table(
        _intervals(entry["intervals"][metric]),
        _differences(entry["differences"].get(metric, {})),
        entry["baseline_row"],
        metric=metric,
        train_length=train_length,
    )
    glance = f"## At a glance ({entry['n_docs']} test documents)\n\n{table}"
    head_to_head = _head_to_head_markdown(entry, metric, train_length)
    return glance + (f"\n## Head to head ({entry['n_docs']} test documents)\n\n{head_to_head}" if head_to_head else "")


def _head_to_head_markdown(entry: dict, metric: str, train_length: int) -> str:
    """The table of the sweep's head-to-head comparisons (each row minus its reference), "" without any."""
    comparisons = (entry.get("comparisons") or {}).get(metric)
    if not comparisons:
        return ""
    return stats.markdown_difference_table(
        _differences(comparisons), "reference", metric=metric, train_length=train_length
    )


# ---------------------------------------------------------------------------------------------------------------------
# A study: the same sweep on several datasets, seed-major across them
# ---------------------------------------------------------------------------------------------------------------------


def study_sweeps(study: dict, overrides: dict | None = None) -> list[SweepConfig]:
    """The sweeps of a study file, or the one sweep of a sweep file, with `overrides` (SweepConfig fields) applied.

    A study file is `{"name", "description", "output_dir", "sweep": {SweepConfig fields shared by all},
    "datasets": {"<name>": {run fields for that dataset, e.g. {"dataset": "20newsgroups"}, sweep fields such
    as long_documents, and "skip_variants": [labels of shared variants this dataset does not run]}}}`; each dataset's
    sweep writes under `output_dir/<name>`. Anything else is one `SweepConfig`.
    """
    overrides = dict(overrides or {})
    if "datasets" not in study:
        return [SweepConfig.from_dict({**study, **overrides})]
    unknown = set(study) - {"name", "description", "output_dir", "sweep", "datasets", "kind"}
    if unknown or not study["datasets"]:
        raise ValueError(
            f"A study file has name, description, output_dir, sweep and a non-empty datasets object; "
            f"unknown key(s) {sorted(unknown)}."
        )
    root = Path(overrides.pop("output_dir", study.get("output_dir", "outputs/study")))
    shared = {**study["sweep"], **overrides}
    sweeps = []
    sweep_fields = set(SweepConfig.field_names())
    for name, entry in study["datasets"].items():
        # A dataset entry holds run fields (its dataset, budget) and may set sweep fields (long_documents).
        entry = dict(entry)
        skipped = entry.pop("skip_variants", [])
        base = {k: v for k, v in entry.items() if k not in sweep_fields}
        values = {**shared, **{k: v for k, v in entry.items() if k in sweep_fields}}
        values.update(base={**shared.get("base", {}), **base}, output_dir=str(root / slug(name)))
        if skipped:  # labels as this dataset's runs get them (a label may name its own run fields)
            values.update(_without_variants(SweepConfig.from_dict(values), skipped, name))
        values["name"] = f"{study.get('name', shared.get('name', 'study'))} ({name})"
        values.setdefault("description", study.get("description", ""))
        sweeps.append(SweepConfig.from_dict(values))
    return sweeps


def _without_variants(sweep: SweepConfig, labels: list[str], dataset: str) -> dict[str, list[dict]]:
    """The sweep's variants but those labelled `labels` (each must be one of them), and its comparisons but those that
    name one of them, as SweepConfig fields."""
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise TypeError(f"skip_variants of {dataset!r} is a list of variant labels, got {labels!r}.")
    runs = dataclasses.replace(sweep, seeds=sweep.seeds[:1]).runs()
    known = [run.variant for run in runs]
    unknown = sorted(set(labels) - set(known))
    if unknown:
        raise ValueError(f"skip_variants of {dataset!r} names no variant of the study: {unknown}. Variants: {known}.")
    return {
        "variants": [variant for variant, run in zip(sweep.variants, runs) if run.variant not in labels],
        "comparisons": comparisons_without(sweep.comparisons, labels),
    }


def run_study(
    sweeps: list[SweepConfig],
    get_dataloaders: Callable | None = None,
    runner: Callable | None = None,
    on_run_finished: Callable | None = None,
    on_seed_finished: Callable | None = None,
) -> list[dict]:
    """Run several sweeps seed-major across them (every dataset's first seed before any second seed).

    After each seed the sweeps' summaries are rewritten, so a study stopped at any point has complete tables for its
    finished seeds; without `resume`, finished runs already in any output folder are refused before anything trains.
    `on_run_finished(run, results)` is called after each run that trained, `on_seed_finished(sweeps)` after each
    seed's tables are written. Returns the final summaries, one per sweep.
    """
    for sweep in sweeps:
        _refuse_finished(sweep.runs(), sweep.resume)
    seeds = sweeps[0].seeds
    if any(sweep.seeds != seeds for sweep in sweeps):
        raise ValueError("The sweeps of a study must share their seeds.")
    summaries: list[dict] = []
    for count in range(1, len(seeds) + 1):
        # Runs finished earlier in this process (or found under resume) are reused from the second seed on.
        summaries = [
            run_sweep(
                dataclasses.replace(sweep, seeds=seeds[:count], resume=sweep.resume or count > 1),
                get_dataloaders,
                runner,
                on_run_finished,
            )
            for sweep in sweeps
        ]
        if on_seed_finished is not None:
            on_seed_finished(sweeps)
    return summaries


def study_length_table(summaries: list[dict]) -> str:
    """The test sets' length distributions of a study's sweeps side by side (one row per dataset, named by its
    folder), Markdown."""
    rows = {
        Path(summary["sweep"]["output_dir"]).name: summary["documents"]["length_distribution"]
        for summary in summaries
        if (summary.get("documents") or {}).get("length_distribution")
    }
    return markdown_length_table(rows) if rows else ""


# ---------------------------------------------------------------------------------------------------------------------
# The best variant of a finished sweep, saved with its model card
# ---------------------------------------------------------------------------------------------------------------------


def best_variant(summary: dict, metric: str = "accuracy", length: int | None = None) -> str:
    """The variant with the highest mean `metric` at `length` (default: the longest evaluation length)."""
    lengths = sorted({int(n) for per in summary["summary"].values() for n in per if n.isdigit()})
    length = length or lengths[-1]
    scores = {
        variant: float(np.mean(per[str(length)][metric]))
        for variant, per in summary["summary"].items()
        if str(length) in per and metric in per[str(length)]
    }
    if not scores:
        raise ValueError(f"No variant of the sweep has {metric} at {length} tokens (lengths: {lengths}).")
    return max(scores, key=scores.get)


def export_best_variant(
    results: str | Path | dict,
    destination: str | Path,
    metric: str = "accuracy",
    length: int | None = None,
    repo_id: str = "hf-posenc/study-best",
) -> dict:
    """Retrain the best variant of a finished classification sweep (its first seed, same settings: same weights),
    save its encoder as a checkpoint with a model card (`hub.save_for_hub`) under `destination`, and print what
    `hub.push_to_hub(..., dry_run=True)` would upload.

    Returns `{"variant", "folder", "results", "push"}`.
    """
    from transformers import AutoTokenizer

    summary = results if isinstance(results, dict) else json.loads(Path(results).read_text())
    if summary.get("kind") != "sweep" or summary["sweep"]["kind"] != "classification":
        raise ValueError("export_best_variant needs a classification sweep's results.json.")
    variant = best_variant(summary, metric, length)
    record = next(r for r in summary["runs"] if r["variant"] == variant)
    run = RunConfig.from_dict({**record["config"], "output_dir": str(Path(destination) / "run"), "progress": False})
    trained = run_classification(run, keep_model=True)
    model = trained.pop("model")
    encoder = getattr(model, "base_model", model)
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(run.model))
    card_results = {k: v for k, v in trained.items() if k != "predictions"}
    agreement = reproduction(record, trained)
    print(f"retrained {variant!r}: {describe_reproduction(agreement)}")
    folder = save_for_hub(encoder, Path(destination) / "checkpoint", tokenizer=tokenizer, results=card_results)
    push = push_to_hub(encoder, repo_id, tokenizer=tokenizer, results=card_results, dry_run=True)
    listing = checkpoint_listing(Path(folder), variant) + reproduction_table(agreement)
    atomic_write(Path(destination) / "checkpoint_files.md", listing)
    return {
        "variant": variant,
        "folder": str(folder),
        "results": card_results,
        "push": push,
        "reproduction": agreement,
    }


def reproduction(recorded: dict, retrained: dict) -> dict[str, dict]:
    """How a retrained run matches the run recorded in a sweep, per evaluation length: both accuracies and the share
    of test documents given the same label (`{length: {"recorded", "retrained", "same_predictions"}}`; the share is
    None when either run kept no predictions). The card reports the retrained model's own numbers; this says whether
    they are the study's."""
    before, after = run_predictions(recorded) or {}, run_predictions(retrained) or {}
    found = {}
    for length, metrics in sorted(recorded["metrics"].items(), key=lambda item: int(item[0])):
        if length not in retrained.get("metrics", {}):
            continue
        same = None
        if length in before and length in after and len(before[length]) == len(after[length]):
            same = float(np.mean([a == b for a, b in zip(before[length], after[length])]))
        found[length] = {
            "recorded": metrics.get("accuracy"),
            "retrained": retrained["metrics"][length].get("accuracy"),
            "same_predictions": same,
        }
    return found


def describe_reproduction(agreement: dict[str, dict]) -> str:
    """One line: identical to the recorded run, or where it differs."""
    if not agreement:
        return "no evaluation length in common with the recorded run"
    if all(cell["same_predictions"] == 1.0 for cell in agreement.values()):
        return f"the recorded run's predictions exactly at {', '.join(agreement)} tokens"
    unknown = [n for n, cell in agreement.items() if cell["same_predictions"] is None]
    differ = [
        f"{n}: {cell['retrained']} (recorded {cell['recorded']}, same labels {cell['same_predictions']:.1%})"
        for n, cell in agreement.items()
        if cell["same_predictions"] not in (None, 1.0)
    ]
    parts = ["other predictions than the recorded run at " + "; ".join(differ)] if differ else []
    if unknown:
        parts.append(
            f"no predictions to compare at {', '.join(unknown)} tokens (accuracies: "
            + "; ".join(f"{agreement[n]['retrained']} vs recorded {agreement[n]['recorded']}" for n in unknown)
            + ")"
        )
    return "; ".join(parts)


def reproduction_table(agreement: dict[str, dict]) -> str:
    """The retrained checkpoint against the study's run, as a Markdown section for the checkpoint listing."""
    rows = [
        f"| {n} | {cell['recorded']} | {cell['retrained']} | "
        + ("" if cell["same_predictions"] is None else f"{cell['same_predictions']:.1%}")
        + " |"
        for n, cell in agreement.items()
    ]
    return "\n".join(
        [
            "\n## Retrained against the study's run\n",
            f"The retrained checkpoint gives {describe_reproduction(agreement)}.\n",
            "| tokens | accuracy (study) | accuracy (retrained) | same predictions |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )


def checkpoint_listing(folder: Path, variant: str) -> str:
    """A Markdown table of a checkpoint folder's files with their sizes and SHA-256, so a card committed without its
    weights still shows the whole layout, and a retrained copy can be checked against it."""
    rows = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = file_digest(path)
        rows.append(f"| `{path.relative_to(folder).as_posix()}` | {path.stat().st_size:,} | `{digest}` |")
    return "\n".join(
        [
            f"# Checkpoint layout: {variant}\n",
            f"The folder `{folder.name}/` as `hub.save_for_hub` wrote it (and a push would upload it). Weights are",
            "not kept in git; the export retrains the variant with its first seed's settings. The SHA-256 identify",
            "this export; a retraining on the same versions but another machine may differ in the weights' last bits",
            "(CPU floating-point kernels differ), so what is checked below is the predictions.\n",
            "| file | bytes | SHA-256 |",
            "|---|---|---|",
            *rows,
            "",
        ]
    )
