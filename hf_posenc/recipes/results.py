"""Results of the recipes: the environment record, results files, Markdown tables and the length plot.

Every results file records the run's settings, the patch spec, versions, seed and git revision
(`hf_posenc.hub.provenance`, shared with the benchmark harness and the model card). Tables are one row per variant
and one column per evaluation length; cells are the mean ± sample std over seeds.
"""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path
from typing import Any

from ..hub.files import atomic_path, atomic_write
from ..hub.provenance import baseline_values, format_mean_std, git_revision, mean_std
from ..hub.provenance import environment as base_environment

__all__ = [
    "NOT_METRICS",
    "aggregate",
    "cell",
    "environment",
    "git_revision",
    "length_distribution",
    "markdown_length_table",
    "markdown_table",
    "mean_std",
    "plot",
    "run_markdown",
    "write_json",
    "write_run_results",
]

RECIPE_PACKAGES = ("accelerate", "datasets")
"""Versions every recipe result records besides the core's."""


def environment(accelerator=None) -> dict[str, Any]:
    """Versions, git revision, processes, threads and device: enough to tell whether two numbers are comparable."""
    record = base_environment(*RECIPE_PACKAGES)
    if accelerator is not None:
        record.update(
            num_processes=accelerator.num_processes,
            device=str(accelerator.device),
            mixed_precision=accelerator.mixed_precision,
        )
    return record


def write_json(data: Any, path: Path) -> None:
    """Write `data` as indented JSON, atomically (a killed process leaves the old file or the new one)."""
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def write_run_results(results: dict, folder: Path) -> None:
    """`results.json` and `results.md` (one row: the run's variant) for a single run.

    A run without metrics (stopped early) removes a `results.md` left by an earlier run in the folder, which would
    otherwise describe a model that this `results.json` does not."""
    write_json(results, folder / "results.json")
    if "metrics" not in results:
        (folder / "results.md").unlink(missing_ok=True)
    else:
        summary = {results["variant"]: {n: {k: [v] for k, v in m.items()} for n, m in results["metrics"].items()}}
        lengths = [int(n) for n in results["metrics"]]
        text = run_markdown(results, summary, lengths)
        atomic_write(folder / "results.md", text)


def run_markdown(results: dict, summary: dict, lengths: list[int]) -> str:
    config = results["config"]
    header = (
        f"# {results['variant']}: {config['model']} on {config['dataset']}\n\n"
        f"Trained at {config['train_length']} tokens, seed {config['seed']}; "
        f"{results['data']['test_examples']} test documents.\n\n"
    )
    return header + markdown_table(summary, lengths, "accuracy") + "\n" + markdown_table(summary, lengths, "macro_f1")


# ---------------------------------------------------------------------------------------------------------------------
# Aggregation, tables and the plot
# ---------------------------------------------------------------------------------------------------------------------

NOT_METRICS = ("n", "seconds", "seq_per_s")
"""Per-length entries of a run's metrics that are counts or timings, not scores."""


def aggregate(runs: list[dict]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{variant: {length: {metric: [value per seed]}}} from a list of run results."""
    summary: dict = {}
    for run in runs:
        for length, metrics in run.get("metrics", {}).items():
            slot = summary.setdefault(run["variant"], {}).setdefault(length, {})
            for name, value in metrics.items():
                if name not in NOT_METRICS:
                    slot.setdefault(name, []).append(value)
    return summary


cell = functools.partial(format_mean_std, mean_format=".3f", spread_format=".3f", missing="—")
"""A recipe table cell: three decimals for the mean and the spread."""


def markdown_table(summary: dict, lengths: list[int], metric: str, baseline: dict | None = None) -> str:
    """Rows: variants (and baselines); columns: evaluation lengths (and full text for baselines)."""
    full = bool(baseline)
    columns = [str(n) for n in lengths] + (["full"] if full else [])
    lines = [f"| {metric} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for variant, per_length in summary.items():
        cells = [cell(per_length.get(c, {}).get(metric)) for c in columns]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    for name, per_length in (baseline or {}).items():
        # Rows drawn per seed (TF-IDF on random windows) show mean ± std over seeds, like the variants.
        cells = [cell(baseline_values(per_length[c], metric) if c in per_length else None) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(
    summary: dict,
    lengths: list[int],
    train_length: int,
    metric: str,
    path: Path,
    title: str = "",
    baseline: dict | None = None,
) -> None:
    """Metric vs evaluation length: one line per variant (error bars: spread over seeds), training length marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 5))
    for variant, per_length in summary.items():
        xs = [n for n in lengths if str(n) in per_length]
        stats = [mean_std(per_length[str(n)][metric]) for n in xs]
        axes.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=variant)
    for (name, per_length), style in zip((baseline or {}).items(), itertools.cycle(("--", "-.", ":"))):
        xs = [n for n in lengths if str(n) in per_length]
        line = axes.plot(xs, [per_length[str(n)][metric] for n in xs], linestyle=style, color="gray", marker="x")[0]
        line.set_label(name)
        if "full" in per_length:  # what the bag of n-grams gets from whole documents: the headroom
            axes.axhline(per_length["full"][metric], color="gray", linestyle=style, linewidth=0.8, alpha=0.6)
    axes.axvline(train_length, color="black", linestyle=":", label=f"training length ({train_length})")
    axes.set_xscale("log", base=2)
    axes.set_xticks(lengths, [str(n) for n in lengths])
    axes.set_xlabel("evaluation length (tokens; documents truncated)")
    axes.set_ylabel(metric)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(figure)


# ---------------------------------------------------------------------------------------------------------------------
# Length distribution of a test set
# ---------------------------------------------------------------------------------------------------------------------

LONG_THRESHOLDS = (512, 1024)
"""Token counts past which a document counts as long in the length table (BERT's table, and twice it)."""


def length_distribution(n_tokens: list[int], thresholds: tuple[int, ...] = LONG_THRESHOLDS) -> dict[str, Any]:
    """Median, 90th percentile and maximum token count of a set of documents, and the share over each threshold.

    Args:
        n_tokens (`list[int]`): Tokens per document (the model's tokenizer, no special tokens).
        thresholds (`tuple[int, ...]`, *optional*, defaults to `(512, 1024)`): Lengths whose exceedance is reported.

    Returns:
        `dict`: `{"n", "median", "p90", "max", "over_512", "over_1024"}` (shares in [0, 1]); percentiles by linear
        interpolation (`numpy.percentile`'s default).

    Raises:
        `ValueError`: On no documents or a negative count.
    """
    import numpy as np

    counts = np.asarray(n_tokens, dtype=float)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any():
        raise ValueError(f"length_distribution needs a non-empty list of token counts >= 0, got {list(n_tokens)[:5]}.")
    record: dict[str, Any] = {
        "n": int(counts.size),
        "median": float(np.percentile(counts, 50)),
        "p90": float(np.percentile(counts, 90)),
        "max": int(counts.max()),
    }
    record.update({f"over_{n}": round(float((counts > n).mean()), 4) for n in thresholds})
    return record


def markdown_length_table(distributions: dict[str, dict[str, Any]]) -> str:
    """One row per dataset (test split): documents, median / p90 / max tokens, share over each threshold."""
    over = sorted({k for d in distributions.values() for k in d if k.startswith("over_")}, key=lambda k: int(k[5:]))
    lines = [
        "| test documents | n | median tokens | p90 | max | " + " | ".join(f"> {k[5:]}" for k in over) + " |",
        "|---" * (5 + len(over)) + "|",
    ]
    for name, d in distributions.items():
        shares = " | ".join(f"{100 * d[k]:.0f}%" for k in over)
        lines.append(f"| {name} | {d['n']} | {d['median']:.0f} | {d['p90']:.0f} | {d['max']} | {shares} |")
    return "\n".join(lines) + "\n"
