"""Masked-LM adaptation after a swap: continued MLM training on running text, MLM loss/accuracy vs length.

    python recipes/mlm_adaptation.py --encoding alibi --mlm_steps 300 --mlm_eval_lengths 128 512 2048
    python recipes/mlm_adaptation.py --encoding alibi --mlm_steps 300 --then_classify   # adapt, then fine-tune

all-MiniLM-L6-v2 has no MLM head: one is built and trained (decoder tied to the word embeddings). With
`--then_classify` the adapted encoder is fine-tuned on the classification task in the same command (the same as
`hf-posenc train --mlm_steps N`).
"""

from __future__ import annotations

import argparse
import sys

from hf_posenc.recipes.classification import run_classification
from hf_posenc.recipes.cli import recipe_parser, settings_from_args
from hf_posenc.recipes.mlm import run_mlm_adaptation
from hf_posenc.recipes.settings import RunConfig


def build_parser() -> argparse.ArgumentParser:
    """`RunConfig`'s options and `--then_classify`."""
    parser = recipe_parser(RunConfig, __doc__.splitlines()[0])
    parser.add_argument("--then_classify", action="store_true", help="fine-tune the adapted encoder on the task")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[RunConfig, bool]:
    args = build_parser().parse_args(argv)
    run = settings_from_args(args, RunConfig)
    if run.mlm_steps < 1:
        run.mlm_steps = 200
    return run, args.then_classify


def main(argv: list[str] | None = None) -> dict:
    run, then_classify = parse_args(argv)
    results = run_classification(run) if then_classify else run_mlm_adaptation(run)
    print(f"results in {run.output_dir}: {results['mlm'].get('after')}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
