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


def commit(paths: list[Path], message: str, attempts: int = 5) -> None:
    """Stage and commit only `paths` (other staged or modified files are left alone); nothing to commit is fine.

    A commit made by hand at the same moment holds git's index lock: retry a few times, then warn and go on (the
    files stay on disk, and the next run's commit or a manual one picks them up); a study never dies of it.
    """
    names = [str(p) for p in paths if p.exists()]
    if not names:
        return
    for attempt in range(attempts):
        try:
            subprocess.run(["git", "add", "--", *names], cwd=ROOT, check=True)
            staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *names], cwd=ROOT)
            if staged.returncode:
                subprocess.run(["git", "commit", "-q", "-m", message, "--", *names], cwd=ROOT, check=True)
                print(f"committed: {message}", flush=True)
            return
        except subprocess.CalledProcessError as error:
            print(f"git failed ({error}); attempt {attempt + 1} of {attempts}", flush=True)
            time.sleep(2 + 3 * attempt)
    print(f"not committed (commit by hand): {message}", flush=True)


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
            names = ("results.json", "results.md", "results.png", "results_differences.png", "results_long.png")
            files = [folder / n for n in (*names, "results_long_differences.png")]
            commit(files, f"{name}: tables of {folder.name} updated")

    run_study(sweeps, on_run_finished=finished, on_seed_finished=rendered)


if __name__ == "__main__":
    main(sys.argv[1:])
