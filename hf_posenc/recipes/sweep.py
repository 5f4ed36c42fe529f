"""Sweeps: several variants x seeds on the same data, split and budget; one table and one plot, with a baseline.

A sweep (`SweepConfig`) runs one `RunConfig` or `Seq2SeqConfig` per variant and seed, reuses finished runs (an
interrupted sweep continues where it stopped), aggregates the mean and spread over seeds, adds the TF-IDF +
logistic-regression baseline, and writes one `results.json`, one `results.md` and one `results.png` (metric vs
evaluation length, one line per variant, training length marked).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..hub.files import atomic_write, read_json
from .classification import (
    classification_dataloaders,
    classification_scores,
    classification_splits,
    run_classification,
)
from .data import resolve_checkpoint, special_tokens
from .results import aggregate, environment, git_revision, markdown_table, plot, write_json
from .seq2seq import run_seq2seq, seq2seq_dataloaders
from .settings import SWEEP_KINDS, RunConfig, SweepConfig, settings_differences, slug
from .training import check_lengths

__all__ = ["SWEEP_KINDS", "SweepConfig", "render", "run_sweep", "slug", "sweep_markdown", "tfidf_baseline"]

# ---------------------------------------------------------------------------------------------------------------------
# TF-IDF + logistic regression baseline (scikit-learn)
# ---------------------------------------------------------------------------------------------------------------------


def tfidf_baseline(run: RunConfig, tokenizer) -> dict[str, dict[str, dict[str, float]]]:
    """TF-IDF 1-2-grams + logistic regression on the run's split, test documents truncated at each length.

    Two rows: trained on full training texts, and trained on texts truncated at the training length (what the
    fine-tuned models saw). Truncation uses the model's tokenizer, so "512" means the same text for both.
    """
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError as error:
        raise ImportError("The TF-IDF baseline needs scikit-learn: pip install scikit-learn") from error
    train, test = classification_splits(run)
    train_texts, test_texts, test_labels = list(train["text"]), list(test["text"]), list(test["label"])

    def truncate(texts: list[str], length: int) -> list[str]:
        room = length - sum(len(t) for t in special_tokens(tokenizer))
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [tokenizer.decode(i[:room]) for i in ids]

    rows = {}
    for name, texts in (
        ("TF-IDF+LR (train full)", train_texts),
        (f"TF-IDF+LR (train @{run.train_length})", truncate(train_texts, run.train_length)),
    ):
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        classifier = LogisticRegression(max_iter=2000, C=10.0)
        classifier.fit(vectorizer.fit_transform(texts), list(train["label"]))
        rows[name] = {}
        for length in [*run.eval_lengths, "full"]:
            inputs = test_texts if length == "full" else truncate(test_texts, length)
            found = torch.tensor(classifier.predict(vectorizer.transform(inputs)))
            rows[name][str(length)] = classification_scores(found, torch.tensor(test_labels))
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Running and rendering a sweep
# ---------------------------------------------------------------------------------------------------------------------


def run_sweep(sweep: SweepConfig, get_dataloaders: Callable | None = None) -> dict:
    """Run (or reuse, when a finished run with the same config is on disk) every run, then write the summary.

    Finished runs are reused, so an interrupted sweep continues where it stopped when started again.
    """
    from transformers import AutoTokenizer

    git_revision()  # the revision of the code this process imported
    runs, runner = sweep.runs(), _runner(sweep.kind, get_dataloaders)
    if sweep.kind == "classification":
        _check_all_lengths(runs)
    started, results = time.perf_counter(), []
    for index, run in enumerate(runs):
        print(f"[{index + 1}/{len(runs)}] {run.variant} seed {run.seed}", flush=True)
        results.append(_reuse(run) or runner(run))
    baseline = None
    if sweep.baseline and sweep.kind == "classification":
        baseline = tfidf_baseline(runs[0], AutoTokenizer.from_pretrained(resolve_checkpoint(runs[0].model)))
    keep = ("variant", "config", "metrics", "train", "mlm", "patch_spec", "timings", "data", "note", "environment")
    keep += ("base_model", "dataset_info")  # each run's provenance, for model cards made from a sweep
    summary = {
        "kind": "sweep",
        "sweep": dataclasses.asdict(sweep),
        "summary": aggregate(results),
        "baseline": baseline,
        "runs": [{k: r[k] for k in keep if k in r} for r in results],
        "environment": environment(),
        "timings": {"total_seconds": round(time.perf_counter() - started, 1)},
    }
    render(summary, Path(sweep.output_dir))
    return summary


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


def _reuse(run) -> dict | None:
    """The finished run's results when its folder holds them; a run with other settings there is refused."""
    path = Path(run.output_dir) / "results.json"
    if not path.is_file():
        return None
    fix = "Delete it (the run is then trained again) or give the sweep another output_dir."
    previous = read_json(path, fix)
    if "metrics" not in previous:
        return None  # stopped early: train it (again)
    saved = previous.get("config") if isinstance(previous, dict) else None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} has no run config, so it cannot be reused. {fix}")
    differences = settings_differences(saved, json.loads(json.dumps(run.to_dict(), default=str)))
    if differences:
        raise ValueError(
            f"{path} holds a finished run with other settings (saved -> requested): {'; '.join(differences)}. {fix}"
        )
    return previous


def render(summary: dict, folder: Path) -> None:
    """Write `results.json`, `results.md` and `results.png` of a sweep (also re-renders from a results.json)."""
    sweep = SweepConfig.from_dict(summary["sweep"])
    base = sweep.runs()[0]
    write_json(summary, folder / "results.json")
    atomic_write(folder / "results.md", sweep_markdown(summary, base.eval_lengths, sweep.metric))
    plot(
        summary["summary"],
        base.eval_lengths,
        base.train_length,
        sweep.metric,
        folder / "results.png",
        f"{_subject(summary['runs'][0])}: trained at {base.train_length} tokens, {len(sweep.seeds)} seed(s)",
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
    """The sweep's Markdown: setting, one table per metric (baseline rows included), timings, environment."""
    sweep, runs = summary["sweep"], summary["runs"]
    seconds = {f"{r['variant']} (seed {r['config']['seed']})": r["timings"]["total_seconds"] for r in runs}
    first_metrics = next(iter(summary["summary"].values()))
    metrics = [metric] + sorted({m for per in first_metrics.values() for m in per} - {metric})
    text = [
        f"# {sweep['name']}\n",
        sweep["description"] + "\n" if sweep["description"] else "",
        _setting(runs[0], sweep["seeds"]),
    ]
    text += [markdown_table(summary["summary"], lengths, m, summary.get("baseline")) for m in metrics]
    text.append("Seconds per run (train + evaluate): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + ".\n")
    text.append(f"Environment: `{json.dumps(summary['environment'])}`\n")
    return "\n".join(t for t in text if t)
