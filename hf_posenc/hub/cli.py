"""The `hf-posenc patch`, `inspect`, `push` and `extend` subcommands, and `inspect_checkpoint`.

hf-posenc patch CHECKPOINT OUTPUT --encoding rope [--encoder X --decoder Y] [--option base=500 ...] [--keep-absolute]
hf-posenc inspect CHECKPOINT [--json]
hf-posenc push FOLDER REPO_ID [--dry-run] [--results results.json] [--private]
hf-posenc extend CHECKPOINT OUTPUT --max-length N [--init copy] [--stacks encoder]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors import safe_open
from transformers import AutoTokenizer

from ..architectures import ARCHITECTURES, present_stacks
from ..encodings import ENCODINGS, EXTENSION_INITS
from ..extension import check_init, check_max_length, extend_positions, make_portable
from ..patching import patch_model, patch_spec
from ..record import CONFIG_KEY, StackRecord
from .assets import resolve_checkpoint
from .files import read_json
from .folders import (
    check_local_source,
    check_output_folder,
    copy_sentence_transformers_files,
    update_max_seq_length,
)
from .format import LoadPlan, read_config, saved_architecture, weight_files
from .loading import from_pretrained, load_plan
from .publish import PushError, push_to_hub

# ---------------------------------------------------------------------------------------------------------------------
# inspect: what a checkpoint is, from its config and safetensors header (no model is built)
# ---------------------------------------------------------------------------------------------------------------------


def inspect_checkpoint(folder: str | os.PathLike) -> dict[str, Any]:
    """Describe a checkpoint folder without loading it: its kind, class, patch spec and, per stack, the encoding, its
    options, the fate of the absolute table and the learned position parameters in the weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"The checkpoint folder {folder} does not exist (inspect reads local folders only).")
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
        f"hf_posenc-patched {config['model_type']} (hf_posenc {plan.record.version})"
        if plan.source == "hf_posenc"
        else f"legacy: {plan.source}; hf_posenc.from_pretrained imports it as a patched {plan.base_type} model"
    )
    stacks = {name: _stack_summary(plan, name, entry, shapes) for name, entry in plan.stacks.items()}
    return {
        "folder": str(folder),
        "kind": kind,
        "class": plan.architecture,
        "posenc": config.get(CONFIG_KEY),  # as written (legacy checkpoints have none)
        "stacks": stacks,
    }


def _header_shapes(folder: Path) -> dict[str | None, tuple[int, ...]]:
    shapes = {}
    for path in weight_files(folder):  # each checked complete first
        with safe_open(path, "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def _stack_summary(plan: LoadPlan, name: str, entry: StackRecord, shapes: dict) -> dict[str, Any]:
    stack = next(s for s in ARCHITECTURES[plan.base_type].stacks if s.name == name)
    module = stack.module.split(".")
    renamed = {plan.rename(k): v for k, v in shapes.items()}
    in_stack = [k for k in renamed if k and _contains(k.split("."), module)]
    learned = sum(_numel(renamed[k]) for k in in_stack if ".posenc." in k)
    table = [k for k in renamed if k and k.endswith(stack.table + ".weight")]
    kept = bool(table) and entry.keeps_table
    return {
        "encoding": entry.encoding,
        "options": entry.options,
        "absolute table": ("kept" if kept else "replaced") + (" (hybrid)" if entry.keep_absolute else ""),
        "position parameters": learned + (_numel(renamed[table[0]]) if kept else 0),
        "max_length": entry.max_length or (renamed[table[0]][0] - stack.offset(plan.config) if kept else None),
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


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "vocab.txt", "vocab.json")


def tokenizer_of(checkpoint: str | os.PathLike):
    """The checkpoint's tokenizer, or None when it has no tokenizer files; a broken tokenizer file is an error that
    names it (a patched checkpoint must not silently lose its tokenizer)."""
    folder = Path(checkpoint)
    if folder.is_dir():
        present = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
        if not present:
            return None
        for path in present:
            if path.suffix == ".json":
                read_json(path)  # names a truncated file
        return AutoTokenizer.from_pretrained(checkpoint)
    try:
        return AutoTokenizer.from_pretrained(checkpoint)
    except (OSError, ValueError, TypeError):  # a Hub checkpoint without tokenizer files
        return None


def _source(command: str, checkpoint: str) -> Path | None:
    """The local folder of a checkpoint argument, or None for a Hub id (saying on stderr that it is downloaded)."""
    folder = check_local_source(checkpoint)
    if folder is None:
        notice = f"{checkpoint} is not a local folder: downloading it from the Hugging Face Hub."
        print(f"hf-posenc {command}: {notice}", file=sys.stderr)
    return folder


@contextlib.contextmanager
def staged_output(output: Path) -> Iterator[Path]:
    """A temporary folder beside `output` to save into; on success each file moves into `output` with `os.replace`
    (an interrupted save leaves whole files only), on failure nothing of it stays."""
    output.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        yield stage
        for path in sorted(stage.rglob("*")):
            target = output / path.relative_to(stage)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _cli_patch(args: argparse.Namespace) -> int:
    options = dict(parse_option(o) for o in args.option)
    requests: dict[str, str | dict] = {}
    for name in ("encoder", "decoder"):
        value, extra = getattr(args, name), dict(parse_option(o) for o in getattr(args, f"{name}_option"))
        if value is not None:  # a bare name takes --option through patch_model; with its own options, a dict
            requests[name] = {"encoding": value, **options, **extra} if extra else value
    if args.encoding is None and not requests:
        raise ValueError("Name an encoding: --encoding NAME, or --encoder NAME / --decoder NAME.")
    max_length = check_max_length(args.max_length) if args.max_length is not None else None
    checkpoint = resolve_checkpoint(args.checkpoint)
    output = check_output_folder(args.output, checkpoint if Path(checkpoint).is_dir() else None)
    source = _source("patch", checkpoint)
    try:
        model, tokenizer = from_pretrained(checkpoint), tokenizer_of(checkpoint)
    except OSError as error:
        if source is not None:
            raise
        raise FileNotFoundError(
            f"{checkpoint} is not a local folder (./{checkpoint} does not exist), and the Hugging Face Hub did not "
            f"provide it ({' '.join(str(error).split())}). Check the path, or the Hub id and your connection."
        ) from error
    by_name = any(isinstance(v, str) for v in requests.values())
    by_name = by_name or (args.encoding is not None and any(s.name not in requests for s in present_stacks(model)))
    patch_model(
        model,
        args.encoding,
        **requests,
        keep_absolute=args.keep_absolute,
        replace=args.replace,
        attention_scale=args.attention_scale,
        attention_scale_length=args.attention_scale_length,
        attention_window=args.attention_window,
        global_tokens=tuple(args.global_tokens),
        global_stride=args.global_stride,
        **({"max_length": max_length, "tokenizer": tokenizer} if max_length else {}),
        **(options if by_name else {}),
    )
    saved = _save(model, tokenizer, source, output, max_length)
    print(f"Patched {args.checkpoint}: {json.dumps(patch_spec(model)['stacks'], sort_keys=True)}")
    print(f"Saved {', '.join(saved)} to {output}")
    return 0


def _save(model, tokenizer, source: Path | None, output: Path, max_length: int | None) -> list[str]:
    """Save model, tokenizer and a sentence-transformers folder's own files (Pooling, Normalize, ...) to `output`;
    the names of what was saved."""
    with staged_output(output) as stage:
        model.save_pretrained(stage)
        if tokenizer is not None:
            tokenizer.save_pretrained(stage)
        sentence_transformers = source is not None and copy_sentence_transformers_files(source, stage)
        if sentence_transformers and max_length:
            update_max_seq_length(stage, max_length)
    return [
        "the model",
        *(["tokenizer"] if tokenizer is not None else []),
        *(["sentence-transformers modules"] if sentence_transformers else []),
    ]


def _cli_inspect(args: argparse.Namespace) -> int:
    info = inspect_checkpoint(args.checkpoint)
    print(json.dumps(info, indent=2, default=str)) if args.json else _print_inspection(info)
    return 0


def _cli_push(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"The local folder {folder} does not exist (push uploads a local folder: save or patch it there first)."
        )
    model, tokenizer = from_pretrained(folder), tokenizer_of(folder)
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
            sentence_transformers_folder=folder,
        )
    except PushError as error:
        print(f"hf-posenc push: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    if result.commit_url:
        print(f"Pushed {len(result.files)} files to {result.commit_url}")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# Command line: hf-posenc extend CHECKPOINT OUTPUT --max-length N [--init copy] [--stacks encoder]
# ---------------------------------------------------------------------------------------------------------------------


def _cli_extend(args: argparse.Namespace) -> int:
    """`hf-posenc extend`: load, extend, save model + tokenizer (+ sentence-transformers files).

    The output is a plain transformers checkpoint (see `make_portable`) unless only some of BART's stacks grew.
    """
    source = Path(args.checkpoint)
    if not source.is_dir():
        raise FileNotFoundError(
            f"The local folder {source} does not exist (extend reads a local checkpoint folder: config.json, "
            "weights, tokenizer)."
        )
    max_length, init = check_max_length(args.max_length), check_init(args.init)
    output = check_output_folder(args.output, source)
    model, tokenizer = from_pretrained(str(source)), tokenizer_of(str(source))
    extend_positions(model, max_length, init=init, tokenizer=tokenizer, stacks=args.stacks)
    portable = make_portable(model)  # an extension alone needs no hf_posenc to load: write a plain checkpoint
    saved = _save(model, tokenizer, source, output, max_length)
    print(f"Extended {source} to {max_length} positions (init={init!r}); saved {', '.join(saved)} to {output}")
    if not portable:
        print("It keeps an hf_posenc record (other encodings, or stacks of different lengths): load it with")
        print("hf_posenc.from_pretrained, or with the transformers Auto classes after `import hf_posenc`.")
    return 0


def _register_extend(subparsers) -> None:
    parser = subparsers.add_parser(
        "extend",
        help="grow a checkpoint's learned position table (e.g. 512 -> 4096) and save it with its tokenizer",
        description=extend_positions.__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", help="local checkpoint folder (config.json, weights, tokenizer)")
    parser.add_argument("output", help="new folder to write the extended checkpoint to (not inside the input)")
    parser.add_argument("--max-length", type=int, required=True, help="the new number of positions")
    parser.add_argument("--init", default="copy", choices=list(EXTENSION_INITS), help="how to fill the new rows")
    parser.add_argument("--stacks", nargs="+", default=None, help="stacks to grow (BART: encoder, decoder); None: all")
    parser.set_defaults(func=_cli_extend)


def register_cli(subparsers) -> None:
    """The `patch`, `inspect`, `push` and `extend` subcommands (every option shows its default in --help)."""
    defaults = argparse.ArgumentDefaultsHelpFormatter
    patch = subparsers.add_parser(
        "patch", help="load a checkpoint, swap its position encoding, save model + tokenizer", formatter_class=defaults
    )
    patch.add_argument(
        "checkpoint", help="checkpoint folder or Hub id (downloaded, said on stderr; all-MiniLM-L6-v2 works offline)"
    )
    patch.add_argument("output", help="new folder to write the patched checkpoint to (not inside the input)")
    patch.add_argument("--encoding", help=f"encoding of every stack: {', '.join(sorted(ENCODINGS))}")
    patch.add_argument("--encoder", help="encoding of the encoder stack (seq2seq models)")
    patch.add_argument("--decoder", help="encoding of the decoder stack (seq2seq models)")
    patch.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="encoding option, e.g. base=500"
    )
    patch.add_argument(
        "--encoder-option", action="append", default=[], metavar="KEY=VALUE", help="option of the encoder's encoding"
    )
    patch.add_argument(
        "--decoder-option", action="append", default=[], metavar="KEY=VALUE", help="option of the decoder's encoding"
    )
    patch.add_argument("--keep-absolute", action="store_true", help="keep the learned absolute table (hybrid)")
    patch.add_argument("--max-length", type=int, help="new input limit (also set on the saved tokenizer); None: keep")
    patch.add_argument("--replace", action="store_true", help="replace the patch of an already patched checkpoint")
    attention = patch.add_argument_group("attention options (every stack; saved with the patch)")
    attention.add_argument(
        "--attention-scale", choices=["log"], help="sharpen scores by log(L)/log(T) past the trained length T"
    )
    attention.add_argument(
        "--attention-scale-length", type=int, help="the reference length T of --attention-scale; None: the table's"
    )
    attention.add_argument(
        "--attention-window", type=int, help="local attention: each token reads the window // 2 tokens either side"
    )
    attention.add_argument(
        "--global-tokens", type=int, nargs="*", default=[0], help="with --attention-window: tokens that read all"
    )
    attention.add_argument("--global-stride", type=int, help="with --attention-window: every Nth token is global")
    patch.set_defaults(func=_cli_patch)

    inspect = subparsers.add_parser(
        "inspect", help="print a checkpoint's patch spec and a per-stack summary", formatter_class=defaults
    )
    inspect.add_argument("checkpoint", help="local checkpoint folder")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(func=_cli_inspect)

    push = subparsers.add_parser(
        "push", help="upload a patched checkpoint with a generated model card", formatter_class=defaults
    )
    push.add_argument("folder", help="local patched checkpoint folder (from `hf-posenc patch` or save_pretrained)")
    push.add_argument("repo_id", help="Hub model repo, e.g. username/bert-alibi")
    push.add_argument("--results", help="a recipe's results.json for the card's results table")
    push.add_argument(
        "--dry-run", action="store_true", help="list the files that would be uploaded; upload nothing, no network"
    )
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--token", help="Hub token; None: HF_TOKEN or `hf auth login`")
    push.add_argument("--commit-message", help="commit message; None: one naming the class and encodings")
    push.add_argument("--base-model", help="Hub id of the checkpoint that was patched (card metadata)")
    push.add_argument("--license", help="license id for the card, normally the base model's (e.g. apache-2.0)")
    push.add_argument("--dataset", action="append", default=[], help="dataset the model was trained on (repeatable)")
    push.set_defaults(func=_cli_push)

    _register_extend(subparsers)
