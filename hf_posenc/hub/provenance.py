"""Where a number came from and how it is printed: versions, git revision, and the mean ± std table cell.

Shared by the layers that record or show results (the recipes' results files, the benchmark harness, the model card),
so that every record names the same versions in the same way and every table prints a number alike. Imports the
standard library, torch and the package version only.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..version import __version__

__all__ = ["baseline_values", "environment", "format_mean_std", "git_revision", "mean_std", "package_version"]

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The folder above the `hf_posenc` package: the git checkout when installed in development mode."""


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The commit of the hf_posenc checkout (with "-dirty" when the package has uncommitted changes), or None.

    Read once per process: the code that runs is the code imported then, whatever is committed while a long sweep or
    benchmark goes on. Runs in the package's own folder, not the working directory, which may be another repository.
    """
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "hf_posenc"],
            cwd=PACKAGE_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def package_version(name: str) -> str | None:
    """The installed version of a distribution, without importing it (None when absent)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(*packages: str) -> dict[str, Any]:
    """Versions (hf_posenc, git revision, Python, torch, transformers and each of `packages`), threads, machine and
    date (UTC): enough to tell whether two numbers are comparable."""
    record: dict[str, Any] = {
        "hf_posenc": __version__,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
    }
    record.update({name: package_version(name) for name in packages})
    record.update(
        torch_threads=torch.get_num_threads(),
        machine=platform.machine(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    return record


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def baseline_values(entry: dict, metric: str) -> list[float]:
    """A baseline cell's `metric` per seed: one value, or one per seed for rows drawn per seed (`"by_seed"`)."""
    return list((entry.get("by_seed") or {}).get(metric) or [entry[metric]])


def format_mean_std(
    values: Sequence[float] | None, mean_format: str = ".4g", spread_format: str = ".2g", missing: str = "-"
) -> str:
    """A table cell: the mean of `values`, "± sample std" when there are several, `missing` when there are none.

    Args:
        values: One value per seed (or None).
        mean_format: Format spec of the mean.
        spread_format: Format spec of the standard deviation.
        missing: The cell of an empty or missing list.
    """
    if not values:
        return missing
    mean, spread = mean_std(values)
    return f"{mean:{mean_format}} ± {spread:{spread_format}}" if len(values) > 1 else f"{mean:{mean_format}}"
