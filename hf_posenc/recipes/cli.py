"""Command lines of the recipes: `hf-posenc train`, `sweep`, `report`, and the parsers of the `recipes/*.py` scripts.

Every option comes from a settings dataclass (`hf_posenc.recipes.settings`) through transformers' `HfArgumentParser`:
the field's name is the flag, its annotation the type, its default the shown default and its `metadata["help"]` the
help. `--config file.json` sets many fields at once; flags given on the command line override it, and unknown keys in
the file are refused with the valid names.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from ..augmentation import METHODS
from ..extension import extend_positions
from ..hub import from_pretrained
from ..hub.files import read_json
from ..patching import patch_model
from .classification import run_classification
from .data import load_running_text, resolve_checkpoint
from .mlm import adapt
from .probes.report import render as render_probes
from .results import write_run_results
from .settings import JsonDict, RunConfig, Settings, SweepConfig
from .sweep import render, run_sweep

__all__ = [
    "FieldDefault",
    "recipe_parser",
    "register_cli",
    "settings_from_args",
    "settings_parser",
    "stopped_message",
]


class FieldDefault:
    """A field's default as the parser holds it: shown in the help like the value, told apart from a given flag.

    `--config` must yield to flags given on the command line but not to defaults, even when a flag repeats the default
    value; a value still wrapped after parsing was not given.
    """

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return str(self.value)

    __repr__ = __str__


def settings_parser(cls: type[Settings]) -> argparse.ArgumentParser:
    """A parent parser (no `-h`) with `--config` and one option per field of `cls`.

    Besides `HfArgumentParser`'s spellings (`--train_length`, `--train-length`, `--no_progress`), every boolean field
    keeps the `--no-<field>` spelling earlier versions took (`--no-warm_start`, `--no-keep_absolute`).
    """
    parser = HfArgumentParser(cls, add_help=False)
    parser.add_argument(
        "--config", help=f"a JSON file of {cls.__name__} fields; options given on the command line override it"
    )
    fields = {item.name: item for item in dataclasses.fields(cls)}
    for action in parser._actions:  # argparse's list of actions: the only way to reach what HfArgumentParser added
        if action.dest in fields:
            action.default = FieldDefault(action.default)
            if action.nargs == 0 and action.const is False:  # the store_false twin of a boolean field
                action.help = f"set {action.dest} to false"
                action.default = FieldDefault(fields[action.dest].default)  # the help shows the field's default
    taken = {option for action in parser._actions for option in action.option_strings}
    hints = typing.get_type_hints(cls)
    for item in fields.values():
        legacy = f"--no-{item.name}"
        if hints[item.name] is bool and legacy not in taken:
            parser.add_argument(
                legacy,
                action="store_false",
                dest=item.name,
                default=FieldDefault(item.default),
                help=f"set {item.name} to false",
            )
    return parser


def recipe_parser(cls: type[Settings], description: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A stand-alone parser of `cls`'s options (the `recipes/*.py` scripts), defaults shown in the help."""
    return argparse.ArgumentParser(
        description=description,
        parents=[settings_parser(cls)],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        **kwargs,
    )


def settings_from_args(args: argparse.Namespace, cls: type[Settings]) -> Any:
    """The settings from parsed arguments: the defaults, under the `--config` file, under the flags given.

    Raises:
        ValueError: unknown keys in the config file (with the valid names), or invalid settings.
    """
    given = {name: getattr(args, name) for name in cls.field_names()}
    given = {name: value for name, value in given.items() if not isinstance(value, FieldDefault)}
    from_file = {}
    if getattr(args, "config", None):
        from_file = read_json(args.config, "Pass a JSON object of settings fields to --config.")
        if not isinstance(from_file, dict):
            raise ValueError(f"{args.config} must hold a JSON object of settings fields.")
        try:
            cls.check_keys(from_file)
        except ValueError as error:
            raise ValueError(f"{args.config}: {error}") from error
    return cls.from_dict({**from_file, **given})


# ---------------------------------------------------------------------------------------------------------------------
# hf-posenc train / sweep / report
# ---------------------------------------------------------------------------------------------------------------------


def register_cli(subparsers) -> None:
    """Add the `train`, `sweep`, `report` and `adapt` subcommands to the `hf-posenc` parser."""
    shown = argparse.ArgumentDefaultsHelpFormatter
    train = subparsers.add_parser(
        "train",
        help="fine-tune a patched model, evaluate at several lengths",
        description="Fine-tune a patched model at one length and evaluate it at several (RunConfig fields).",
        parents=[settings_parser(RunConfig)],
        formatter_class=shown,
    )
    train.set_defaults(func=_cli_train)
    sweep = subparsers.add_parser(
        "sweep",
        help="several encodings x seeds on the same data; table and plot",
        description="Several variants x seeds on the same data (SweepConfig fields, usually from --config).",
        parents=[settings_parser(SweepConfig)],
        formatter_class=shown,
    )
    sweep.set_defaults(func=_cli_sweep)
    report = subparsers.add_parser(
        "report",
        help="re-render results.md / results.png from a results.json",
        description="Re-render results.md (and the plots of a sweep or a probe run) from a results.json.",
        formatter_class=shown,
    )
    report.add_argument("results", help="a results.json written by `train`, `sweep` or `probe`")
    report.set_defaults(func=_cli_report)
    register_adapt(subparsers)


def register_adapt(subparsers) -> None:
    """`hf-posenc adapt CHECKPOINT OUTPUT`: masked-LM adaptation with position augmentation (`adapt`)."""
    parser = subparsers.add_parser(
        "adapt",
        help="masked-LM adaptation with position augmentation; writes a checkpoint",
        description=(
            "Teach a checkpoint positions up to --target_length by masked-LM training on short windows with "
            "position augmentation (hf_posenc.adapt), and save it to OUTPUT; it loads with "
            "hf_posenc.from_pretrained or transformers' Auto classes after `import hf_posenc`."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", help="a local folder, a Hub id or all-MiniLM-L6-v2 (patched or not)")
    parser.add_argument("output", help="the folder to write (must not exist or be empty)")
    parser.add_argument("--target_length", type=int, required=True, help="the length to prepare the model for")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--augmentation", default="pose", choices=("none", *METHODS), help="position augmentation")
    parser.add_argument("--train_length", type=int, default=128, help="tokens per training chunk")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="AdamW peak learning rate")
    parser.add_argument("--batch_size", type=int, default=16, help="chunks per step")
    parser.add_argument(
        "--head_warmup_steps", type=int, default=0, help="steps that train only a new MLM head first (0: none)"
    )
    parser.add_argument("--head_learning_rate", type=float, default=1e-3, help="learning rate of the head warm-up")
    parser.add_argument("--seed", type=int, default=0, help="seed of the head, data order, masks and augmentation")
    parser.add_argument("--texts", default="wikipedia", help="running text: an offline dataset name or a local file")
    parser.add_argument("--encoding", default=None, help="patch this encoding first (unset: keep the checkpoint's)")
    parser.add_argument("--encoding_options", type=JsonDict, default=JsonDict(), help="the encoding's options (JSON)")
    parser.add_argument("--max_length", type=int, default=None, help="grow a learned position table to this length")
    parser.set_defaults(func=_cli_adapt)


def _cli_adapt(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"{output} exists and is not an empty folder; choose a new OUTPUT.")
    checkpoint = resolve_checkpoint(args.checkpoint)
    texts = list(load_running_text(args.texts, seed=args.seed)["text"])
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = from_pretrained(checkpoint)
    if args.encoding is not None:
        grow = {"max_length": args.max_length, "tokenizer": tokenizer} if args.max_length else {}
        patch_model(model, args.encoding, replace=True, **grow, **args.encoding_options)
    elif args.max_length is not None:
        extend_positions(model, args.max_length, tokenizer=tokenizer)
    adapt(
        model,
        tokenizer,
        texts,
        target_length=args.target_length,
        steps=args.steps,
        augmentation=args.augmentation,
        train_length=args.train_length,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        seed=args.seed,
        head_warmup_steps=args.head_warmup_steps,
        head_learning_rate=args.head_learning_rate,
        output_dir=output,
    )
    print(
        f"adapted {args.checkpoint} to {args.target_length} tokens ({args.augmentation}, {args.steps} steps): {output}"
    )
    return 0


def stopped_message(results: dict) -> str:
    """Where a run stopped by `stop_after` stopped, its checkpoint, and the command-line change that resumes it."""
    train = results["train"]
    return (
        f"Stopped after step {train['completed_steps']} of {train['total_steps']} (stop_after); checkpoint: "
        f"{train.get('checkpoint')}. Not evaluated, so no results.md. To continue, run the same command with "
        "--resume_from latest (and without --stop_after, or with a later step)."
    )


def _cli_train(args: argparse.Namespace) -> int:
    results = run_classification(settings_from_args(args, RunConfig))
    if "metrics" not in results:
        print(stopped_message(results))
        return 0
    print((Path(results["config"]["output_dir"]) / "results.md").read_text())
    return 0


def _cli_sweep(args: argparse.Namespace) -> int:
    summary = run_sweep(settings_from_args(args, SweepConfig))
    print((Path(summary["sweep"]["output_dir"]) / "results.md").read_text())
    return 0


def _cli_report(args: argparse.Namespace) -> int:
    path = Path(args.results)
    results = read_json(path, "Pass a results.json written by `hf-posenc train`, `sweep` or `probe`.")
    if not isinstance(results, dict) or ("config" not in results and results.get("kind") != "sweep"):
        raise ValueError(f"{path} is not a results.json written by `hf-posenc train`, `sweep` or `probe`.")
    if results.get("kind") == "probe":
        render_probes(results, path.parent)
        print((path.parent / "results.md").read_text())
        return 0
    if "metrics" not in results and results.get("kind") != "sweep":
        print(stopped_message(results))
        return 0
    if results.get("kind") == "sweep":
        render(results, path.parent)
    else:
        write_run_results(results, path.parent)
    print((path.parent / "results.md").read_text())
    return 0
