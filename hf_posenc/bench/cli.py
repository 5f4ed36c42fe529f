"""The benchmark's command line: `hf-posenc bench` and `python benchmarks/run.py` (the same options)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from .grid import BART_ENCODINGS, MODES, PRESETS, SHAPES, Grid
from .harness import run_grid, write_results

DESCRIPTION = "Speed and memory of every encoding against the unpatched model."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="grid to run")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), help="override the preset's shapes")
    parser.add_argument("--lengths", nargs="+", type=int, help="override the preset's sequence lengths")
    parser.add_argument("--batches", nargs="+", type=int, help="override the preset's batch sizes")
    parser.add_argument("--modes", nargs="+", choices=MODES, help="override the preset's modes")
    parser.add_argument("--encodings", nargs="+", choices=BART_ENCODINGS, help="only these encodings")
    parser.add_argument("--budget", type=float, help="seconds of timing per configuration (sets the rounds)")
    parser.add_argument("--threads", type=int, help="torch threads; unset: one per core")
    parser.add_argument("--device", help="override the preset's device (cpu, cuda)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="override the preset's dtype")
    parser.add_argument("--kernels", action="store_true", help="record the SDPA kernel each encoding reaches")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory measurements")
    parser.add_argument("--no-extras", action="store_true", help="skip patch time and import time")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    parser.add_argument("--name", help="output file stem; unset: the preset's name")
    parser.add_argument("--resume", action="store_true", help="keep the configurations already in the output JSON")
    parser.add_argument("--render", type=Path, help="only re-render an existing results JSON as Markdown, and exit")


def grid_from_args(args: argparse.Namespace) -> Grid:
    """The preset's grid with the command line's overrides."""
    grid = PRESETS[args.preset]
    overrides = {
        "shapes": args.shapes,
        "lengths": args.lengths,
        "batches": args.batches,
        "modes": args.modes,
        "encodings": args.encodings,
        "budget_s": args.budget,
        "threads": args.threads,
        "device": args.device,
        "dtype": args.dtype,
        "kernels": args.kernels or None,
    }
    grid = Grid(**{**asdict(grid), **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v}})
    if args.no_memory:
        grid.memory_modes = ()
    grid.extras = grid.extras and not args.no_extras
    if any(n < 1 for n in (*grid.lengths, *grid.batches)):
        raise ValueError(f"Lengths and batch sizes must be >= 1, got {grid.lengths} and {grid.batches}.")
    return grid


def run_command(args: argparse.Namespace) -> int:
    if args.render is not None:
        results = json.loads(args.render.read_text())
        write_results(results, args.render.parent, args.render.stem)
        print(f"Wrote {args.render.with_suffix('.md')}")
        return 0
    grid = grid_from_args(args)
    name = args.name or args.preset
    results = run_grid(grid, args.out, name, resume=args.resume)
    met = sum(t["met"] for t in results["targets"])
    print(f"Wrote {args.out / name}.json and .md; targets met: {met}/{len(results['targets'])}")
    return 0


def register_cli(subparsers) -> None:
    """`hf-posenc bench`: the speed and memory benchmark."""
    parser = subparsers.add_parser(
        "bench",
        help="time and memory of every encoding against the unpatched model",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `benchmarks/run.py`."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py", description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_arguments(parser)
    return run_command(parser.parse_args(argv))
