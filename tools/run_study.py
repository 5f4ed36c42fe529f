"""Run a study in the background and `git commit` each finished run's folder as it finishes.

    nohup python tools/run_study.py > outputs/run_study.log 2>&1 &      # or: tools/run_study.sh
    python tools/run_study.py --config recipes/configs/study_v2_full.json --output_dir recipes/results/study_v2_full

The study resumes (`--resume`): a stopped study started again reuses every committed run and continues with the next.
Each run that finishes is committed alone (`git commit -- <its folder>`, message naming the study, dataset, variant
and seed); each sweep's results.json / results.md / plots are committed after each seed (the tables so far).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from hf_posenc.recipes.sweep import run_study, study_sweeps

ROOT = Path(__file__).resolve().parent.parent
TABLE_FILES = ("results.json", "results.md") + tuple(
    f"results{subset}{plot}.png" for subset in ("", "_long") for plot in ("", "_differences", "_head_to_head")
)
"""What a sweep's render writes beside its runs: committed after each seed."""


def git_with_retries(action, description: str, attempts: int = 5) -> bool:
    """Run `action` (some git calls raising `CalledProcessError` on failure); a commit made by hand at the same
    moment holds git's index lock, so retry a few times, then warn and return False: a study never dies of git."""
    for attempt in range(attempts):
        try:
            action()
            return True
        except subprocess.CalledProcessError as error:
            print(f"git failed ({error}); attempt {attempt + 1} of {attempts}", flush=True)
            time.sleep(2 + 3 * attempt)
    print(f"not done (do it by hand): {description}", flush=True)
    return False


def commit(paths: list[Path], message: str, attempts: int = 5) -> None:
    """Stage and commit only `paths` (other staged or modified files are left alone); nothing to commit is fine.

    Retried while git's index lock is held (`git_with_retries`); if it stays held the files stay on disk, and the
    next run's commit or a manual one picks them up.
    """
    names = [str(p) for p in paths if p.exists()]
    if not names:
        return

    def add_and_commit() -> None:
        subprocess.run(["git", "add", "--", *names], cwd=ROOT, check=True)
        staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *names], cwd=ROOT)
        if staged.returncode:
            subprocess.run(["git", "commit", "-q", "-m", message, "--", *names], cwd=ROOT, check=True)
            print(f"committed: {message}", flush=True)

    git_with_retries(add_and_commit, f"commit: {message}", attempts)


def run_seeds(summary: dict) -> set[int]:
    """The seeds a sweep summary's runs cover."""
    return {run["seed"] if "seed" in run else run["config"]["seed"] for run in summary.get("runs", [])}


def committed_seeds(results: Path) -> set[int] | None:
    """The seeds the committed (HEAD) version of a sweep's results.json covers; None when none is committed (or the
    file lies outside the repository)."""
    try:
        relative = results.resolve().relative_to(ROOT.resolve())
    except ValueError:
        return None
    shown = subprocess.run(["git", "show", f"HEAD:{relative.as_posix()}"], cwd=ROOT, capture_output=True, text=True)
    return run_seeds(json.loads(shown.stdout)) if shown.returncode == 0 else None


def keeps_committed_tables(results: Path, files: list[Path]) -> bool:
    """Restore the committed tables when the fresh render covers only some of their seeds, and say so.

    A restarted driver renders each finished seed in turn (seed 0 alone first); committing that would replace
    tables over more seeds with tables over fewer until the last finished seed is rendered again. Seeds, not runs,
    are compared: a sweep that dropped a row renders fewer runs over the same seeds, and those tables are committed.
    """
    committed = committed_seeds(results)
    fresh = run_seeds(json.loads(results.read_text())) if results.exists() else set()
    if committed is None or not fresh < committed:
        return False
    tracked = [str(f.resolve().relative_to(ROOT.resolve())) for f in files]

    def restore() -> None:
        listed = subprocess.run(["git", "ls-files", "--", *tracked], cwd=ROOT, capture_output=True, text=True)
        subprocess.run(["git", "checkout", "HEAD", "--", *listed.stdout.split()], cwd=ROOT, check=True)

    name = results.parent.name
    if git_with_retries(restore, f"restore the committed tables of {name} (git checkout HEAD -- {' '.join(tracked)})"):
        kept = f"kept the committed tables of {name} (seeds {sorted(committed)}; this render had {sorted(fresh)})"
        print(kept, flush=True)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "recipes/configs/study_v2_full.json"), help="study/sweep JSON")
    parser.add_argument("--output_dir", default=None, help="default: the config's output_dir")
    parser.add_argument("--no_commit", action="store_true", help="run and resume, commit nothing")
    args = parser.parse_args(argv)
    study = json.loads(Path(args.config).read_text())
    overrides = {"resume": True, **({"output_dir": args.output_dir} if args.output_dir else {})}
    sweeps = study_sweeps(study, overrides)
    name = study.get("name", Path(args.config).stem)

    def finished(run, results) -> None:
        folder = Path(run.output_dir)
        if not args.no_commit:
            commit(
                [folder],
                f"{name}: run {folder.parent.parent.name}/{folder.name} finished ({run.variant}, seed {run.seed})",
            )

    def rendered(done: list) -> None:
        for sweep in done if not args.no_commit else []:
            folder = Path(sweep.output_dir)
            files = [folder / n for n in TABLE_FILES]
            if keeps_committed_tables(folder / "results.json", files):
                continue
            commit(files, f"{name}: tables of {folder.name} updated")

    run_study(sweeps, on_run_finished=finished, on_seed_finished=rendered)


if __name__ == "__main__":
    main(sys.argv[1:])
