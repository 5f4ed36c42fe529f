"""Results of probe runs: `results.json`, `results.md` (Acc@1 per method x length per task, depth x length per
method), `results.png` (Acc@1 vs length) and `heatmaps.png` (depth x length per method and task)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..results import write_json
from ..stats import score_interval


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _cell(value: float | None, n: int | None) -> str:
    """`0.62 [0.47, 0.76]`: Acc@1 with its 95% score interval over the cell's `n` queries."""
    if value is None:
        return "—"
    if not n:
        return _fmt(value)
    low, high = score_interval(value, n)
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def _done(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in results["methods"].items() if r.get("status") == "done"}


def markdown(results: dict[str, Any]) -> str:
    """results.md: the setting, Acc@1 per method x length per task, depth x length per method, timings."""
    config, summary = results["config"], results["probe_set"]
    settings = summary["settings"]
    lengths = [str(n) for n in settings["lengths"]]
    done = _done(results)
    text = [
        f"# {config['name']}: {Path(str(config['checkpoint'])).name}\n",
        f"Acc@1 (the query's nearest document by cosine, {config['pooling']} pooling, is its own; a tie "
        f"with k others counts 1 / (k + 1)) over all documents of a length. Probe set `{summary['hash']}`: "
        f"depths {settings['depths']}, "
        f"{settings['per_depth']} documents per depth ({settings['long_per_depth']} above {settings['long_from']} "
        f"tokens), seed {settings['seed']}, needle haystack `{settings['haystack']}` ("
        f"{'a window per document' if settings.get('varied_haystack') else 'one window per length'}). Lengths "
        "count the tokenizer's ids, special tokens included. Brackets: 95% Wilson score interval over the cell's "
        "queries (one per document; `stats.score_interval`). — : not run (past the method's limit).\n",
    ]
    for task in settings["tasks"]:
        text.append(f"## {task}\n")
        text.append("| Acc@1 | " + " | ".join(lengths) + " |\n|---" * 1 + "|---" * len(lengths) + "|")
        for name, r in done.items():
            row, sizes = r["acc_at_1"].get(task, {}), r.get("candidates", {}).get(task, {})
            text.append(f"| {name} | " + " | ".join(_cell(row.get(n), sizes.get(n)) for n in lengths) + " |")
        chance = [summary["chance"].get(f"{task}/{n}") for n in lengths]
        text.append("| chance | " + " | ".join(_fmt(c) for c in chance) + " |\n")
    strict = [name for name, r in done.items() if "tied_queries" not in r]
    if strict:
        text.append(
            f"- Scored before ties shared credit, when a tie counted as a miss (tied queries not recorded): "
            f"{', '.join(f'`{n}`' for n in strict)}. Only a query whose own document ties exactly for nearest can "
            "score differently.\n"
        )
    tied = {
        name: sum(n for per_length in r["tied_queries"].values() for n in per_length.values())
        for name, r in done.items()
        if "tied_queries" in r
    }
    if tied:
        text.append(f"- Tied queries (shared credit), all tasks and lengths: {tied}.\n")
    unavailable = {n: r for n, r in results["methods"].items() if r.get("status") == "unavailable"}
    for name, r in unavailable.items():
        text.append(f"- `{name}` not available in this hf_posenc: {r['reason']}\n")
    text.append("## Depth x length\n")
    for name, r in done.items():
        for task in settings["tasks"]:
            per_length = r["by_depth"].get(task, {})
            if not per_length:
                continue
            text.append(f"**{name}, {task}** (rows: depth of the key)\n")
            text.append("| depth | " + " | ".join(lengths) + " |\n" + "|---" * (len(lengths) + 1) + "|")
            for depth in settings["depths"]:
                cells = [_fmt(per_length.get(n, {}).get(str(depth))) for n in lengths]
                text.append(f"| {depth} | " + " | ".join(cells) + " |")
            text.append("")
    timings = ", ".join(f"{name} {r['total_seconds']:.0f}" for name, r in done.items())
    text.append(f"Seconds per method (load, patch, embed, score): {timings}.\n")
    text.append(f"Environment: `{json.dumps(results['environment'])}`\n")
    return "\n".join(text)


def plot_scores(results: dict[str, Any], path: Path) -> None:
    """Acc@1 vs length, one line per method, one panel per task; chance dotted, trained length marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings, done = results["probe_set"]["settings"], _done(results)
    tasks, lengths = settings["tasks"], settings["lengths"]
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks) + 3, 5), squeeze=False)
    markers = "osD^v<>pPX*h"
    for axis, task in zip(axes[0], tasks):
        for index, (name, r) in enumerate(done.items()):
            row = r["acc_at_1"].get(task, {})
            xs = [n for n in lengths if str(n) in row]
            style = "-" if index < 10 else "--"
            color = plt.get_cmap("tab20")(index % 20)  # 20 distinct colors: a study has about that many methods
            ys = [row[str(n)] for n in xs]
            sizes = r.get("candidates", {}).get(task, {})
            bounds = [
                score_interval(row[str(n)], sizes[str(n)]) if sizes.get(str(n)) else (y, y) for n, y in zip(xs, ys)
            ]
            errors = [[y - low for y, (low, _) in zip(ys, bounds)], [high - y for y, (_, high) in zip(ys, bounds)]]
            shift = 2 ** (0.015 * (index - (len(done) - 1) / 2))  # side by side, so the bars stay readable
            axis.errorbar(
                [x * shift for x in xs],
                ys,
                yerr=errors,
                fmt=style + markers[index % len(markers)],
                color=color,
                elinewidth=0.6,
                capsize=1.5,
                label=name,
            )
        chance = [results["probe_set"]["chance"][f"{task}/{n}"] for n in lengths]
        axis.plot(lengths, chance, ":", color="gray", label="chance")
        trained = next((r["trained_length"] for r in done.values()), None)
        if trained:
            axis.axvline(trained, color="black", linestyle=":", linewidth=0.8)
        axis.set_xscale("log", base=2)
        axis.set_xticks(lengths, [str(n) for n in lengths])
        axis.set_ylim(-0.03, 1.03)
        axis.set_xlabel("document length (tokens)")
        axis.set_ylabel("Acc@1")
        axis.set_title(f"{task} (bars: 95% score intervals)")
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    title, model = results["config"]["name"], Path(str(results["config"]["checkpoint"])).name
    figure.suptitle(title if model in title else f"{title}: {model}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_heatmaps(results: dict[str, Any], path: Path) -> None:
    """Depth x length Acc@1: one heatmap per method (rows) and task (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings, done = results["probe_set"]["settings"], _done(results)
    if not done:
        return
    tasks, lengths, depths = settings["tasks"], settings["lengths"], settings["depths"]
    figure, axes = plt.subplots(
        len(done),
        len(tasks),
        figsize=(4.2 * len(tasks) + 1, 2.2 * len(done) + 0.6),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for row, (name, r) in enumerate(done.items()):
        for column, task in enumerate(tasks):
            axis = axes[row][column]
            per_length = r["by_depth"].get(task, {})
            grid = torch.full((len(depths), len(lengths)), float("nan"))
            for j, n in enumerate(lengths):
                for i, d in enumerate(depths):
                    value = per_length.get(str(n), {}).get(str(d))
                    if value is not None:
                        grid[i, j] = value
            image = axis.imshow(grid.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
            for i in range(len(depths)):
                for j in range(len(lengths)):
                    if not torch.isnan(grid[i, j]):
                        color = "black" if grid[i, j] > 0.6 else "white"
                        axis.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6, color=color)
            axis.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
            axis.set_yticks(range(len(depths)), [str(d) for d in depths], fontsize=7)
            axis.set_title(f"{name} / {task}", fontsize=8)
            if row == len(done) - 1:
                axis.set_xlabel("length (tokens)", fontsize=7)
            if column == 0:
                axis.set_ylabel("depth", fontsize=7)
    figure.colorbar(image, ax=axes, shrink=0.6, label="Acc@1")
    figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(figure)


def render(results: dict[str, Any], folder: Path, plots: bool = True) -> None:
    """Write `results.json`, `results.md` and (with `plots`) `results.png` and `heatmaps.png`."""

    folder.mkdir(parents=True, exist_ok=True)
    write_json(results, folder / "results.json")
    (folder / "results.md").write_text(markdown(results))
    if plots and _done(results):
        plot_scores(results, folder / "results.png")
        plot_heatmaps(results, folder / "heatmaps.png")
