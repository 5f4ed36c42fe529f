"""The length-generalization study: all-MiniLM-L6-v2 fine-tuned at 128 tokens, evaluated to 2048, with intervals.

    python recipes/study.py --quick   # the main job: 4 rows + TF-IDF, 1 seed, Pang & Lee, from scratch (~8 min)
    python recipes/study.py --full    # recipes/configs/study_v2_full.json: 3 seeds, Pang & Lee and 20 Newsgroups
    python recipes/study.py --full --resume --output_dir recipes/results/study_v2_full   # continue a stopped study
    python recipes/study.py --full --finished_only --output_dir recipes/results/study_v2_full   # interim tables
    python recipes/study.py --model_card recipes/results/study_v2_full/pang_lee/results.json

Every run trains from scratch into a fresh folder (default `outputs/<preset>/<UTC time>`); finished runs are reused
only with `--resume`, and each reuse is printed. Each sweep writes results.json, results.md (tables with a 95%
bootstrap interval per cell and each row's paired difference to the baseline row) and results.png (intervals). At the
end the table is compared with the committed reference (`recipes/results/<preset>/results.json`): cells that agree
exactly, within noise, or differ are printed and written to comparison.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hf_posenc.recipes.cli import FieldDefault, recipe_parser, settings_from_args
from hf_posenc.recipes.settings import SweepConfig
from hf_posenc.recipes.sweep import (
    NoInterimTables,
    compare_with_reference,
    export_best_variant,
    render_finished,
    run_study,
    study_length_table,
    study_sweeps,
)

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT / "configs"
PRESETS = {"quick": "study_quick_v2", "full": "study_v2_full"}
"""Preset name -> config file stem under recipes/configs/ (also the folder of its reference under recipes/results/)."""


def build_parser() -> argparse.ArgumentParser:
    """A preset (a sweep or study JSON under recipes/configs/), any `SweepConfig` option to override it, and the
    reference comparison and model-card steps."""
    parser = recipe_parser(SweepConfig, __doc__.splitlines()[0])
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="the default: 1 seed, about 8 min on 2 idle CPU cores")
    preset.add_argument("--full", action="store_true", help="3 seeds, two datasets: several sessions (see config)")
    parser.add_argument(
        "--reference",
        default=None,
        help="a sweep's results.json to compare with; default recipes/results/<preset>/results.json",
    )
    parser.add_argument("--no_compare", action="store_true", help="skip the comparison with the reference")
    parser.add_argument(
        "--finished_only",
        action="store_true",
        help="train nothing: write interim tables of a stopped study from its finished runs (with --output_dir)",
    )
    parser.add_argument(
        "--model_card",
        default=None,
        metavar="RESULTS_JSON",
        help="instead of running: retrain the best variant of this finished sweep and write its checkpoint and model "
        "card under model_cards/<study>-<dataset>/ (dry-run push)",
    )
    return parser


def preset_name(args: argparse.Namespace) -> str:
    return "full" if args.full else "quick"


def parse_args(argv: list[str] | None = None) -> SweepConfig:
    """The first sweep of the chosen preset, with the flags given applied (a study file's first dataset)."""
    return parse_study(argv)[0][0]


def parse_study(argv: list[str] | None = None) -> tuple[list[SweepConfig], argparse.Namespace]:
    """The sweeps of the chosen preset or `--config` file with the flags given, and the parsed arguments.

    Without `--output_dir` the study writes to a fresh `outputs/<preset>/<UTC time>` folder, never the committed
    reference folder.
    """
    args = build_parser().parse_args(argv)
    if args.config is None:
        args.config = str(CONFIGS / f"{PRESETS[preset_name(args)]}.json")
    if isinstance(args.output_dir, FieldDefault):
        args.output_dir = f"outputs/{Path(args.config).stem}/{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    study = json.loads(Path(args.config).read_text())
    if "datasets" not in study:
        return [settings_from_args(args, SweepConfig)], args
    given = {n: getattr(args, n) for n in SweepConfig.field_names() if not isinstance(getattr(args, n), FieldDefault)}
    given.pop("config", None)
    return study_sweeps(study, given), args


def reference_path(args: argparse.Namespace, sweep: SweepConfig, sweeps: list[SweepConfig]) -> Path:
    """`--reference`, else recipes/results/<preset>/results.json (a study: .../<preset>/<dataset>/results.json)."""
    if args.reference:
        return Path(args.reference)
    folder = ROOT / "results" / Path(args.config).stem
    return folder / (Path(sweep.output_dir).name if len(sweeps) > 1 else "") / "results.json"


def compare(summary: dict, reference: Path, output_dir: Path) -> bool | None:
    """Compare with the reference, print and write `comparison.md`; None when there is no reference file."""
    if not reference.is_file():
        print(f"No reference at {reference}: nothing compared.")
        return None
    if reference.resolve() == (output_dir / "results.json").resolve():
        print(f"The output folder is the reference folder ({reference.parent}): nothing compared.")
        return None
    comparison = compare_with_reference(summary, reference, summary["sweep"]["metric"])
    verdict = "AGREES with" if comparison.ok else "DIFFERS from"
    text = f"# Fresh run vs reference\n\nThis run ({output_dir}) {verdict} {reference}: {comparison.markdown()}\n"
    (output_dir / "comparison.md").write_text(text)
    print(text)
    return comparison.ok


def main(argv: list[str] | None = None) -> list[dict]:
    sweeps, args = parse_study(argv)
    if args.model_card:
        summary = json.loads(Path(args.model_card).read_text())
        name = f"{Path(args.config).stem}-{Path(summary['runs'][0]['config']['dataset']).name}"
        exported = export_best_variant(summary, Path("model_cards") / name, summary["sweep"]["metric"])
        print(f"best variant: {exported['variant']}; checkpoint and model card in {exported['folder']}")
        return [exported]
    if args.finished_only:
        summaries = []
        for sweep in sweeps:
            try:
                summaries.append(render_finished(sweep))
            except NoInterimTables as error:  # this dataset has not started: the others still get their tables
                print(f"skipped: {error}")
                continue
            print(f"tables of the finished runs: {Path(sweep.output_dir) / 'results.md'}")
        return summaries
    summaries = run_study(sweeps)
    if len(sweeps) > 1:  # the datasets' test lengths side by side, beside their folders
        table = study_length_table(summaries)
        (Path(sweeps[0].output_dir).parent / "lengths.md").write_text(f"# Test documents, in tokens\n\n{table}")
        print(table)
    for sweep, summary in zip(sweeps, summaries):
        folder = Path(sweep.output_dir)
        print((folder / "results.md").read_text())
        print(f"plot: {folder / 'results.png'}")
        if not args.no_compare:
            compare(summary, reference_path(args, sweep, sweeps), folder)
    return summaries


if __name__ == "__main__":
    main(sys.argv[1:])
