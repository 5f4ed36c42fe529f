"""Fine-tune a BERT-family model with a swapped (or extended) position encoding; evaluate at several lengths.

    accelerate launch recipes/classification.py --encoding alibi --dataset pang_lee \
        --train_length 128 --eval_lengths 128 256 512 1024 2048 --output_dir recipes/results/alibi

    python recipes/classification.py --encoding learned --max_length 2048 --mlm_steps 200   # adapt, then fine-tune

Any `hf_posenc.recipes.RunConfig` field is an option (`--config file.json` sets many at once). Same as
`hf-posenc train ...`. Results: `results.json` (spec, versions, seed, git revision, timings) and `results.md`.
"""

from __future__ import annotations

import argparse
import sys

from hf_posenc.recipes.classification import classification_dataloaders, run_classification
from hf_posenc.recipes.cli import recipe_parser, settings_from_args, stopped_message
from hf_posenc.recipes.settings import RunConfig


def build_parser() -> argparse.ArgumentParser:
    """One option per `RunConfig` field, with its help and default; `--config file.json` sets many at once."""
    return recipe_parser(RunConfig, __doc__.splitlines()[0])


def parse_args(argv: list[str] | None = None) -> RunConfig:
    return settings_from_args(build_parser().parse_args(argv), RunConfig)


def get_dataloaders(run: RunConfig, tokenizer):
    """(train loader at `train_length`, {length: eval loader}, data facts). Tests replace this seam."""
    return classification_dataloaders(run, tokenizer)


def main(argv: list[str] | None = None) -> dict:
    # train -> evaluate -> write results: hf_posenc.recipes.classification.run_classification.
    results = run_classification(parse_args(argv), get_dataloaders=get_dataloaders)
    if "metrics" not in results:
        print(stopped_message(results))
    else:
        print(f"results in {results['config']['output_dir']}: {results['metrics']}")
    return results


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, TypeError, FileNotFoundError) as error:  # one line naming the file and the fix
        sys.exit(f"{sys.argv[0]}: error: {error}")
