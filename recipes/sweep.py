"""Run a sweep: several encodings x seeds on the same data, split and budget; one table and one plot.

    python recipes/sweep.py --config recipes/configs/study_quick.json --output_dir outputs/sweep
    accelerate launch recipes/sweep.py --config recipes/configs/study_full.json --output_dir outputs/full

The config is a `hf_posenc.recipes.SweepConfig` in JSON: `base` (fields shared by all), `variants` (fields
per line of the table), `seeds`, `baseline` (TF-IDF + logistic regression), `metric`, `baseline_variant` and
`long_documents` (intervals and paired differences). Finished runs are reused only with `--resume` (printed per
run), so an interrupted sweep continues where it stopped; without it a folder with finished runs is refused. Same as
`hf-posenc sweep --config ...`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_posenc.recipes.classification import classification_dataloaders
from hf_posenc.recipes.cli import recipe_parser, settings_from_args
from hf_posenc.recipes.settings import SweepConfig
from hf_posenc.recipes.sweep import run_sweep


def build_parser() -> argparse.ArgumentParser:
    """`SweepConfig`'s options; `--config` (the sweep JSON) sets them, the other options override it."""
    return recipe_parser(SweepConfig, __doc__.splitlines()[0])


def parse_args(argv: list[str] | None = None) -> SweepConfig:
    return settings_from_args(build_parser().parse_args(argv), SweepConfig)


def get_dataloaders(run, tokenizer):
    """Classification loaders for one run of the sweep. Tests replace this seam."""
    return classification_dataloaders(run, tokenizer)


def main(argv: list[str] | None = None) -> dict:
    sweep = parse_args(argv)
    summary = run_sweep(sweep, get_dataloaders=get_dataloaders if sweep.kind == "classification" else None)
    print((Path(sweep.output_dir) / "results.md").read_text())
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
