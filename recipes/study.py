"""The length-generalization study: all-MiniLM-L6-v2 on Pang & Lee reviews, trained at 128 tokens, evaluated to 2048.

    python recipes/study.py --quick   # 7 encodings, 1 seed, small budget: 11 min on 2 idle CPU cores (measured)
    python recipes/study.py --full    # 3 seeds, all 1200 training reviews, 100 test reviews: about 1.5 h on 2 cores

Encodings: the learned table extended to 2048 by copying, sinusoidal, relative_key (Shaw), t5, alibi, rope, nezha;
the TF-IDF + logistic regression baseline is in the table. Prints the table and writes results.json, results.md and
results.png under recipes/results/study_quick (or study_full). Same as
`hf-posenc sweep --config recipes/configs/study_quick.json`; `recipes/configs/study_large.json` adds 3 epochs, all 300
test reviews and every encoding with and without MLM adaptation (about a day on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_posenc.recipes.cli import recipe_parser, settings_from_args
from hf_posenc.recipes.settings import SweepConfig
from hf_posenc.recipes.sweep import run_sweep

CONFIGS = Path(__file__).resolve().parent / "configs"


def build_parser() -> argparse.ArgumentParser:
    """A preset (the sweep JSON under recipes/configs/), and any `SweepConfig` option to override it."""
    parser = recipe_parser(SweepConfig, __doc__.splitlines()[0])
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="the default: about 11 minutes on 2 idle CPU cores")
    preset.add_argument("--full", action="store_true", help="3 seeds, all training reviews: about 1.5 h on 2 cores")
    return parser


def parse_args(argv: list[str] | None = None) -> SweepConfig:
    args = build_parser().parse_args(argv)
    if args.config is None:
        args.config = str(CONFIGS / ("study_full.json" if args.full else "study_quick.json"))
    return settings_from_args(args, SweepConfig)


def main(argv: list[str] | None = None) -> dict:
    sweep = parse_args(argv)
    summary = run_sweep(sweep)
    print((Path(sweep.output_dir) / "results.md").read_text())
    print(f"plot: {Path(sweep.output_dir) / 'results.png'}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
