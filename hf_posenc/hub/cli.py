"""The `hf-posenc patch`, `inspect` and `push` subcommands, and `inspect_checkpoint`.

hf-posenc patch CHECKPOINT OUTPUT --encoding rope [--encoder X --decoder Y] [--option base=500 ...] [--keep-absolute]
hf-posenc inspect CHECKPOINT [--json]
hf-posenc push FOLDER REPO_ID [--dry-run] [--results results.json] [--private]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..architectures import ARCHITECTURES, row_offset
from ..encodings import ENCODINGS
from ..patching import patch_model, patch_spec
from .loading import (
    CONFIG_KEY,
    LoadPlan,
    from_pretrained,
    load_plan,
    read_config,
    saved_architecture,
    weight_files,
)

# ---------------------------------------------------------------------------------------------------------------------
# inspect: what a checkpoint is, from its config and safetensors header (no model is built)
# ---------------------------------------------------------------------------------------------------------------------


def inspect_checkpoint(folder: str | os.PathLike) -> dict[str, Any]:
    """Describe a checkpoint folder without loading it: its kind, class, patch spec and, per stack, the encoding, its
    options, the fate of the absolute table and the learned position parameters in the weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder.")
    config = read_config(folder)
    plan = load_plan(config)
    if plan is None:
        return {
            "folder": str(folder),
            "kind": f"unpatched {config['model_type']}",
            "class": saved_architecture(config),
        }
    shapes = {key: shape for key, shape in _header_shapes(folder).items() if key is not None}
    kind = (
        f"hf_posenc-patched {config['model_type']} (hf_posenc {config[CONFIG_KEY].get('version')})"
        if plan.source == "hf_posenc"
        else f"legacy: {plan.source}; hf_posenc.from_pretrained imports it as a patched {plan.base_type} model"
    )
    stacks = {name: _stack_summary(plan, name, entry, shapes) for name, entry in plan.stacks.items()}
    return {
        "folder": str(folder),
        "kind": kind,
        "class": plan.architecture,
        "posenc": config.get(CONFIG_KEY),
        "stacks": stacks,
    }


def _header_shapes(folder: Path) -> dict[str | None, tuple[int, ...]]:
    from safetensors import safe_open

    shapes = {}
    for path in weight_files(folder):
        with safe_open(path, "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def _stack_summary(plan: LoadPlan, name: str, entry: dict[str, Any], shapes: dict) -> dict[str, Any]:
    stack = next(s for s in ARCHITECTURES[plan.base_type].stacks if s.name == name)
    module = stack.module.split(".")
    renamed = {plan.rename(k): v for k, v in shapes.items()}
    in_stack = [k for k in renamed if k and _contains(k.split("."), module)]
    learned = sum(_numel(renamed[k]) for k in in_stack if ".posenc." in k)
    table = [k for k in renamed if k and k.endswith(stack.table + ".weight")]
    kept = bool(table) and (entry["encoding"] == "learned" or entry.get("keep_absolute"))
    return {
        "encoding": entry["encoding"],
        "options": entry["options"],
        "absolute table": ("kept" if kept else "replaced") + (" (hybrid)" if entry.get("keep_absolute") else ""),
        "position parameters": learned + (_numel(renamed[table[0]]) if kept else 0),
        "max_length": entry.get("max_length")
        or (renamed[table[0]][0] - row_offset(stack, plan.config) if kept else None),
    }


def _contains(parts: list[str], sub: list[str]) -> bool:
    return any(parts[i : i + len(sub)] == sub for i in range(len(parts)))


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _print_inspection(info: dict[str, Any]) -> None:
    print(f"{info['folder']}: {info['kind']}")
    print(f"class: {info.get('class') or '(not recorded)'}")
    if info.get("posenc") is not None:
        print("posenc: " + json.dumps(info["posenc"], sort_keys=True))
    for name, stack in (info.get("stacks") or {}).items():
        options = ", ".join(f"{k}={v!r}" for k, v in stack["options"].items()) or "-"
        limit = stack["max_length"] or "none"
        print(
            f"  {name}: {stack['encoding']} ({options}); absolute table {stack['absolute table']}; "
            f"{stack['position parameters']:,} learned position parameters; input limit {limit}"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Command line: hf-posenc patch | inspect | push
# ---------------------------------------------------------------------------------------------------------------------


def parse_option(text: str) -> tuple[str, Any]:
    """`key=value` with a JSON value (`base=500` -> 500, `scaling=null` -> None), or the plain string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise ValueError(f"An option must look like key=value (e.g. base=500), got {text!r}.")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, None if value == "None" else value


def tokenizer_of(checkpoint: str | os.PathLike):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(checkpoint)
    except (OSError, ValueError, TypeError):  # a checkpoint without tokenizer files
        return None


def _cli_patch(args: argparse.Namespace) -> int:
    from ..recipes.data import resolve_checkpoint

    options = dict(parse_option(o) for o in args.option)
    requests = {}
    for name in ("encoder", "decoder"):
        value, extra = getattr(args, name), dict(parse_option(o) for o in getattr(args, f"{name}_option"))
        if value is not None:
            requests[name] = {"encoding": value, **options, **extra, "keep_absolute": args.keep_absolute}
    if args.encoding is None and not requests:
        raise ValueError("Name an encoding: --encoding NAME, or --encoder NAME / --decoder NAME.")
    checkpoint = resolve_checkpoint(args.checkpoint)
    model, tokenizer = from_pretrained(checkpoint), tokenizer_of(checkpoint)
    patch_model(
        model,
        args.encoding,
        **requests,
        keep_absolute=args.keep_absolute,
        replace=args.replace,
        **({"max_length": args.max_length, "tokenizer": tokenizer} if args.max_length else {}),
        **({} if requests and args.encoding is None else options),
    )
    model.save_pretrained(args.output)
    if tokenizer is not None:
        tokenizer.save_pretrained(args.output)
    print(f"Patched {args.checkpoint}: {json.dumps(patch_spec(model)['stacks'], sort_keys=True)}")
    print(f"Saved the model{' and tokenizer' if tokenizer is not None else ''} to {args.output}")
    return 0


def _cli_inspect(args: argparse.Namespace) -> int:
    info = inspect_checkpoint(args.checkpoint)
    print(json.dumps(info, indent=2, default=str)) if args.json else _print_inspection(info)
    return 0


def _cli_push(args: argparse.Namespace) -> int:
    from .publish import PushError, push_to_hub

    model, tokenizer = from_pretrained(args.folder), tokenizer_of(args.folder)
    try:
        result = push_to_hub(
            model,
            args.repo_id,
            tokenizer=tokenizer,
            results=args.results,
            private=args.private,
            token=args.token,
            commit_message=args.commit_message,
            dry_run=args.dry_run,
            base_model=args.base_model,
            license=args.license,
            datasets=args.dataset or None,
        )
    except PushError as error:
        print(f"hf-posenc push: error: {error}", file=sys.stderr)
        return 1
    if result.commit_url:
        print(f"Pushed {len(result.files)} files to {result.commit_url}")
    return 0


def register_cli(subparsers) -> None:
    """The `patch`, `inspect` and `push` subcommands."""
    patch = subparsers.add_parser(
        "patch", help="load a checkpoint, swap its position encoding, save model + tokenizer"
    )
    patch.add_argument("checkpoint", help="checkpoint folder or Hub id (all-MiniLM-L6-v2 works offline)")
    patch.add_argument("output", help="folder to write the patched checkpoint to")
    patch.add_argument("--encoding", help=f"encoding of every stack: {', '.join(sorted(ENCODINGS))}")
    patch.add_argument("--encoder", help="encoding of the encoder stack (seq2seq models)")
    patch.add_argument("--decoder", help="encoding of the decoder stack (seq2seq models)")
    patch.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="encoding option, e.g. base=500"
    )
    patch.add_argument("--encoder-option", action="append", default=[], metavar="KEY=VALUE")
    patch.add_argument("--decoder-option", action="append", default=[], metavar="KEY=VALUE")
    patch.add_argument("--keep-absolute", action="store_true", help="keep the learned absolute table (hybrid)")
    patch.add_argument("--max-length", type=int, help="new input limit (also set on the saved tokenizer)")
    patch.add_argument("--replace", action="store_true", help="replace the patch of an already patched checkpoint")
    patch.set_defaults(func=_cli_patch)

    inspect = subparsers.add_parser("inspect", help="print a checkpoint's patch spec and a per-stack summary")
    inspect.add_argument("checkpoint", help="checkpoint folder")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(func=_cli_inspect)

    push = subparsers.add_parser("push", help="upload a patched checkpoint with a generated model card")
    push.add_argument("folder", help="patched checkpoint folder (from `hf-posenc patch` or save_pretrained)")
    push.add_argument("repo_id", help="Hub model repo, e.g. username/bert-alibi")
    push.add_argument("--results", help="a recipe's results.json for the card's results table")
    push.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded; upload nothing")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--token", help="Hub token (default: HF_TOKEN or `hf auth login`)")
    push.add_argument("--commit-message")
    push.add_argument("--base-model", help="Hub id of the checkpoint that was patched (card metadata)")
    push.add_argument("--license", help="license id for the card, normally the base model's (e.g. apache-2.0)")
    push.add_argument("--dataset", action="append", default=[], help="dataset the model was trained on (repeatable)")
    push.set_defaults(func=_cli_push)
