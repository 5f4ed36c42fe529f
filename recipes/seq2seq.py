"""Seq2seq length generalization on a small BART (NOT pretrained BART: none is reachable offline).

    python recipes/seq2seq.py --encodings learned sinusoidal t5 alibi rope --task copy --train_length 16 \
        --eval_lengths 16 32 64 --d_model 128 --heads 4 --ffn_dim 512 --no-warm_start --train_examples 19200
    hf-posenc sweep --config recipes/configs/seq2seq_quick.json    # the committed study (recipes/results/)

Offline tasks `copy` and `reverse` are built from real running text (Wikipedia articles of the gensim wheel): the
output must reproduce the input span, forwards or backwards, so accuracy depends on finding positions. With the
Hub, `--task xsum` (columns document/summary) runs the same recipe as summarization. One results.json, results.md
and results.png for all encodings, each result marked `"pretrained_bart": false`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_posenc.recipes.cli import recipe_parser, settings_from_args
from hf_posenc.recipes.seq2seq import seq2seq_dataloaders
from hf_posenc.recipes.settings import Seq2SeqConfig, SweepConfig
from hf_posenc.recipes.sweep import run_sweep

ENCODINGS = ["learned", "sinusoidal", "t5", "alibi", "rope"]


def build_parser() -> argparse.ArgumentParser:
    """`Seq2SeqConfig`'s options, plus the encodings and seeds to sweep."""
    parser = recipe_parser(Seq2SeqConfig, __doc__.splitlines()[0])
    parser.add_argument("--encodings", nargs="+", default=ENCODINGS, help="one run per encoding (and seed)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="one run per seed (and encoding)")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[Seq2SeqConfig, list[str], list[int]]:
    args = build_parser().parse_args(argv)
    return settings_from_args(args, Seq2SeqConfig), args.encodings, args.seeds


def get_dataloaders(run: Seq2SeqConfig, tokenizer):
    """(train loader at `train_length`, {length: eval loader}). Tests replace this seam."""
    return seq2seq_dataloaders(run, tokenizer)


def main(argv: list[str] | None = None) -> dict:
    run, encodings, seeds = parse_args(argv)
    base = {k: v for k, v in run.to_dict().items() if k not in ("encoding", "seed", "label", "output_dir")}
    sweep = SweepConfig(
        name=f"seq2seq {run.task}",
        kind="seq2seq",
        output_dir=run.output_dir,
        base=base,
        seeds=seeds,
        variants=[{"encoding": e} for e in encodings],
        baseline=False,
        metric="token_accuracy",
    )
    summary = run_sweep(SweepConfig.from_dict(vars(sweep)), get_dataloaders=get_dataloaders)
    print((Path(run.output_dir) / "results.md").read_text())
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
