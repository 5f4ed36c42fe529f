"""Run a sweep: several encodings x seeds on the same data, split and budget; one table and one plot.

    python recipes/sweep.py --config recipes/configs/study_quick.json
    accelerate launch recipes/sweep.py --config recipes/configs/study_full.json

The config is a `hf_posenc.recipes.reporting.SweepConfig` in JSON: `base` (fields shared by all), `variants` (fields
per line of the table), `seeds`, `baseline` (TF-IDF + logistic regression), `metric`. Finished runs are reused, so
an interrupted sweep continues where it stopped. Same as `hf-posenc sweep --config ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hf_posenc.recipes.reporting import SweepConfig, run_sweep
from hf_posenc.recipes.training import classification_dataloaders


def parse_args(argv: list[str] | None = None) -> SweepConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="sweep JSON file")
    parser.add_argument("--output_dir", help="override the config's output folder")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the config's seeds")
    args = parser.parse_args(argv)
    values = json.loads(Path(args.config).read_text())
    values.update({k: v for k, v in (("output_dir", args.output_dir), ("seeds", args.seeds)) if v})
    return SweepConfig.from_dict(values)


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
