"""Results of the recipes: environment record, Markdown tables, the length-generalization plot, sweeps, baseline.

A sweep runs several encodings on the same data, split, seeds and budget (one `RunConfig` each), aggregates the mean
and spread over seeds, adds the TF-IDF + logistic-regression baseline, and writes one `results.json`, one
`results.md` and one `results.png` (metric vs evaluation length, one line per encoding, training length marked).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .training import RunConfig, classification_dataloaders, classification_splits, run_classification

# ---------------------------------------------------------------------------------------------------------------------
# What every results file records
# ---------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The commit of the hf_posenc checkout (with "-dirty" when it has uncommitted changes), or None.

    Read once per process (runs call it when they start): the code that runs is the code imported then, whatever is
    committed while a long sweep goes on.
    """
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "hf_posenc"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(accelerator=None) -> dict[str, Any]:
    """Versions, git revision, processes, threads and device: enough to tell whether two numbers are comparable."""
    import accelerate
    import datasets
    import transformers

    record = {
        "hf_posenc": __version__,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if accelerator is not None:
        record.update(
            num_processes=accelerator.num_processes,
            device=str(accelerator.device),
            mixed_precision=accelerator.mixed_precision,
        )
    return record


def write_json(data: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_run_results(results: dict, folder: Path) -> None:
    """`results.json` and `results.md` (one row: the run's variant) for a single run."""
    write_json(results, folder / "results.json")
    if "metrics" in results:
        summary = {results["variant"]: {n: {k: [v] for k, v in m.items()} for n, m in results["metrics"].items()}}
        lengths = [int(n) for n in results["metrics"]]
        text = run_markdown(results, summary, lengths)
        (folder / "results.md").write_text(text)


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


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values: list[float] | None) -> str:
    if not values:
        return "—"
    mean, spread = mean_std(values)
    return f"{mean:.3f} ± {spread:.3f}" if len(values) > 1 else f"{mean:.3f}"


def markdown_table(summary: dict, lengths: list[int], metric: str, baseline: dict | None = None) -> str:
    """Rows: variants (and baselines); columns: evaluation lengths (and full text for baselines)."""
    full = bool(baseline)
    columns = [str(n) for n in lengths] + (["full"] if full else [])
    lines = [f"| {metric} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for variant, per_length in summary.items():
        cells = [_cell(per_length.get(c, {}).get(metric)) for c in columns]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    for name, per_length in (baseline or {}).items():
        cells = [_cell([per_length[c][metric]] if c in per_length else None) for c in columns]
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
    for (name, per_length), style in zip((baseline or {}).items(), ("--", "-.", ":")):
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
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


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
    from .training import classification_scores, special_tokens

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
# Sweeps
# ---------------------------------------------------------------------------------------------------------------------


SWEEP_KINDS = ("classification", "seq2seq")


@dataclass
class SweepConfig:
    """Several variants (encodings, options, MLM adaptation) x seeds on one dataset, split and budget."""

    name: str = "sweep"
    description: str = ""
    kind: str = "classification"  # or "seq2seq" (hf_posenc.seq2seq.Seq2SeqConfig fields)
    output_dir: str = "recipes/results/sweep"
    base: dict = field(default_factory=dict)  # run fields shared by every variant
    variants: list = field(default_factory=list)  # run fields per variant (at least "encoding")
    seeds: list = field(default_factory=lambda: [0])
    baseline: bool = True  # TF-IDF + logistic regression (classification only)
    metric: str = "accuracy"  # the metric of the plot and the first table

    @classmethod
    def from_dict(cls, values: dict) -> SweepConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown sweep key(s) {unknown}. Valid keys: {sorted(names)}.")
        sweep = cls(**values)
        if sweep.kind not in SWEEP_KINDS:
            raise ValueError(f"Sweep kind must be one of {SWEEP_KINDS}, got {sweep.kind!r}.")
        if not sweep.variants:
            raise ValueError('A sweep needs at least one variant, e.g. {"encoding": "alibi"}.')
        if not sweep.seeds:
            raise ValueError("A sweep needs at least one seed.")
        sweep.runs()  # validates every key of every run before anything runs
        return sweep

    @classmethod
    def from_file(cls, path: str | Path) -> SweepConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def run_class(self) -> type:
        if self.kind == "seq2seq":
            from .seq2seq import Seq2SeqConfig

            return Seq2SeqConfig
        return RunConfig

    def runs(self) -> list:
        """One run config per (seed, variant), each with its own output folder under `output_dir/runs`."""
        runs = []
        for seed in self.seeds:  # seed-major: an interrupted sweep has every variant for its first seeds
            for variant in self.variants:
                run = self.run_class().from_dict({**self.base, **variant, "seed": seed})
                run.output_dir = str(Path(self.output_dir) / "runs" / f"{slug(run.variant)}_seed{seed}")
                runs.append(run)
        return runs


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=@+-]+", "_", text).strip("_")


def run_sweep(sweep: SweepConfig, get_dataloaders: Callable | None = None) -> dict:
    """Run (or reuse, when a finished run with the same config is on disk) every run, then write the summary.

    Finished runs are reused, so an interrupted sweep continues where it stopped when started again.
    """
    from transformers import AutoTokenizer

    from .data import resolve_checkpoint

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
        from .seq2seq import run_seq2seq, seq2seq_dataloaders

        return lambda run: run_seq2seq(run, get_dataloaders=get_dataloaders or seq2seq_dataloaders)
    return lambda run: run_classification(run, get_dataloaders=get_dataloaders or classification_dataloaders)


def _check_all_lengths(runs: list[RunConfig]) -> None:
    """Refuse impossible lengths for every variant before the first one trains."""
    from transformers import AutoConfig

    from .data import resolve_checkpoint
    from .training import check_lengths

    for run in runs:
        config = AutoConfig.from_pretrained(resolve_checkpoint(run.model))
        check_lengths(config, run, [run.train_length, *run.eval_lengths, *run.mlm_eval_lengths])


def _reuse(run) -> dict | None:
    path = Path(run.output_dir) / "results.json"
    if not path.is_file():
        return None
    previous = json.loads(path.read_text())
    wanted = {k: v for k, v in run.to_dict().items() if k != "progress"}
    found = {k: v for k, v in previous.get("config", {}).items() if k != "progress"}
    return previous if found == wanted and "metrics" in previous else None


def render(summary: dict, folder: Path) -> None:
    """Write `results.json`, `results.md` and `results.png` of a sweep (also re-renders from a results.json)."""
    sweep = SweepConfig.from_dict(summary["sweep"])
    base = sweep.runs()[0]
    write_json(summary, folder / "results.json")
    (folder / "results.md").write_text(sweep_markdown(summary, base.eval_lengths, sweep.metric))
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
