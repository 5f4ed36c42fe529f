"""The Accelerate training loop every recipe shares: model patching, the accelerator, optimizer, loop, checkpoints.

`fit` prepares a model, AdamW with a linear schedule and a loader, then runs `train_loop`: gradient accumulation,
`save_state`/`load_state` checkpoints at optimizer-step boundaries with exact resume, and an early stop that simulates
a kill. `check_lengths` refuses lengths a learned table cannot take before any data is loaded. What each recipe does
around the loop (data, evaluation, results) lives in `classification`, `mlm` and `seq2seq`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..architectures import architecture_for, row_offset
from ..encodings import ENCODINGS, canonical_name
from ..extension import extend_positions
from ..hub.files import atomic_write, publish_folder, read_json
from ..patching import patch_model
from .data import resolve_checkpoint
from .settings import RunConfig, TrainingSettings, settings_differences

# ---------------------------------------------------------------------------------------------------------------------
# Model: patch, and refuse impossible lengths before any training
# ---------------------------------------------------------------------------------------------------------------------


def supported_length(config, run: RunConfig) -> int | None:
    """The longest input (tokens) the requested encoding can take on this checkpoint; None when unbounded."""
    cls = ENCODINGS[canonical_name(run.encoding)]
    if not (cls.max_length_bound or run.keep_absolute):
        return None
    arch = architecture_for(types.SimpleNamespace(config=config))
    table_rows = run.max_length + row_offset(arch.stacks[0], config) if run.max_length else None
    return (table_rows or config.max_position_embeddings) - row_offset(arch.stacks[0], config)


def check_lengths(config, run: RunConfig, lengths: list[int]) -> None:
    """Raise a ValueError naming the fix when a length exceeds what the encoding allows (learned tables)."""
    if not lengths or min(lengths) < 4:
        raise ValueError(f"Lengths must be at least 4 tokens, got {lengths}.")
    limit = supported_length(config, run)
    too_long = sorted(n for n in lengths if limit is not None and n > limit)
    if too_long:
        raise ValueError(
            f"Lengths {too_long} exceed the {limit} positions of the learned table of {run.model!r} with encoding "
            f"{run.encoding!r}{' (keep_absolute=True)' if run.keep_absolute else ''}. Extend the table with "
            f"max_length={max(lengths)} (e.g. --max_length {max(lengths)}; new rows copy the trained ones), "
            f"or choose an encoding without a length bound: "
            f"{sorted(n for n, c in ENCODINGS.items() if not c.max_length_bound and c.kind != 'none')}."
        )


def apply_encoding(model: nn.Module, run: RunConfig) -> nn.Module:
    """Patch `model` as `run` asks: swap the encoding and, with `max_length`, grow the learned table (its `init`
    option fills the new rows; see `hf_posenc.extension`). A relative encoding with `keep_absolute` keeps the
    learned table beside it; `max_length` then grows that kept table, its new rows filled by `run.absolute_init`."""
    grows_kept_table = (
        run.keep_absolute and run.max_length and not ENCODINGS[canonical_name(run.encoding)].keeps_learned_table
    )
    model = patch_model(
        model,
        run.encoding,
        keep_absolute=run.keep_absolute,
        max_length=None if grows_kept_table else run.max_length,
        replace=True,
        **run.encoding_options,
    )
    if grows_kept_table and run.max_length > architecture_for(model).stacks[0].config_limit(model.config):
        extend_positions(model, run.max_length, init=run.absolute_init)
    return model


def load_pretrained(model_class, run: RunConfig, **kwargs) -> nn.Module:
    """`model_class.from_pretrained` of the run's checkpoint (offline names resolved), quietly."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the new head, which is expected here
    try:
        return model_class.from_pretrained(resolve_checkpoint(run.model), **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


# ---------------------------------------------------------------------------------------------------------------------
# Accelerate: the accelerator, the optimizer, the training loop with exact resume
# ---------------------------------------------------------------------------------------------------------------------


def make_accelerator(run: TrainingSettings, project_dir: str | Path | None = None):
    """An `Accelerator` with seedable data order (exact resume), the run's precision, accumulation and tracker."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    run.validate()  # fields may have been set after construction
    # A sweep runs many Accelerators in one process, with their own precision and accumulation; Accelerate keeps
    # these in process-wide singletons, so start each run from a clean one (the distributed PartialState is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # Several processes and no GPU (`accelerate launch --multi_gpu --num_processes 2` on a CPU machine): Accelerate
    # only picks its multi-CPU (gloo) mode when told `cpu=True`; otherwise each process would train alone.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(
        cpu=multi_cpu,
        mixed_precision=run.mixed_precision,
        gradient_accumulation_steps=run.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=run.seed),
        log_with=run.report_to,
        project_config=ProjectConfiguration(project_dir=str(project_dir or run.output_dir)),
    )


def make_optimizer(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    total_steps: int,
    warmup_ratio: float,
    head_learning_rate: float | None = None,
):
    """AdamW without decay on biases and norms, and a linear schedule with warm-up.

    `head_learning_rate` applies to the parameters outside `model.base_model` (a new task head): a randomly
    initialized linear head moves only about `learning_rate` per coordinate and step under Adam, far too slowly for
    a budget of tens of steps at the encoder's learning rate.
    """
    from transformers import get_linear_schedule_with_warmup

    base = {id(p) for p in model.base_model.parameters()} if head_learning_rate else None
    groups = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decays = parameter.ndim > 1 and "LayerNorm" not in name
        in_head = base is not None and id(parameter) not in base
        groups.append(
            {
                "params": [parameter],
                "weight_decay": weight_decay if decays else 0.0,
                "lr": head_learning_rate if in_head else learning_rate,
            }
        )
    optimizer = torch.optim.AdamW(_merge_groups(groups), lr=learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


def _merge_groups(groups: list[dict]) -> list[dict]:
    merged: dict[tuple, dict] = {}
    for group in groups:
        key = (group["weight_decay"], group["lr"])
        merged.setdefault(key, {**group, "params": []})["params"] += group["params"]
    return list(merged.values())


@dataclass
class LoopSettings:
    """What the training loop needs besides the prepared objects."""

    total_steps: int
    steps_per_epoch: int
    checkpoint_dir: Path
    checkpoint_every: int | None = None
    resume_from: str | None = None
    stop_after: int | None = None
    max_grad_norm: float = 1.0
    progress: bool = True
    description: str = "training"
    seed: int = 0
    run_settings: dict[str, Any] | None = None
    """The run's settings, saved with each checkpoint and compared with the saved ones on resume."""


def steps_per_epoch(loader: DataLoader | range, accumulation: int) -> int:
    return math.ceil(len(loader) / accumulation)


def train_loop(accelerator, model, optimizer, scheduler, loader, settings: LoopSettings) -> dict[str, Any]:
    """Train for `settings.total_steps` optimizer steps; checkpoint, resume exactly, or stop early.

    Exact resume: `save_state` stores model, optimizer, scheduler and RNG states at an optimizer-step boundary;
    the seedable sampler replays each epoch's order, `skip_first_batches` skips the batches already seen, and
    dropout is re-seeded from (seed, step) at each step (`_reseed`).
    """
    from tqdm.auto import tqdm

    state, checkpoint = {"completed_steps": 0, "losses": []}, None
    if settings.resume_from:
        state = _resume(accelerator, settings)
    accumulation = accelerator.gradient_accumulation_steps
    progress = tqdm(
        total=settings.total_steps,
        initial=state["completed_steps"],
        desc=settings.description,
        disable=not (settings.progress and accelerator.is_local_main_process),
    )
    started, micro_losses = time.perf_counter(), []
    epoch = state["completed_steps"] // settings.steps_per_epoch
    while state["completed_steps"] < settings.total_steps:
        loader.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):  # per-epoch data (random training windows); Accelerate skips it
            loader.dataset.set_epoch(epoch)  # when its sampler has set_epoch, as the seedable sampler does
        if hasattr(loader.collate_fn, "set_epoch"):  # per-epoch augmentation (position ids)
            loader.collate_fn.set_epoch(epoch)
        skip = (state["completed_steps"] - epoch * settings.steps_per_epoch) * accumulation
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        model.train()
        for index, batch in enumerate(batches):
            if index % accumulation == 0:
                _reseed(settings.seed, state["completed_steps"], accelerator.process_index)
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                micro_losses.append(accelerator.gather(loss.detach()).float().mean().item())
                accelerator.backward(loss)
                if accelerator.sync_gradients and settings.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            state["completed_steps"] += 1
            state["losses"].append(sum(micro_losses) / len(micro_losses))
            state.setdefault("learning_rates", []).append(scheduler.get_last_lr()[0])
            micro_losses = []
            progress.update(1)
            progress.set_postfix(loss=f"{state['losses'][-1]:.4f}")
            accelerator.log({f"{settings.description}/loss": state["losses"][-1]}, step=state["completed_steps"])
            if _should_save(state["completed_steps"], settings):
                checkpoint = _save(accelerator, settings, state)
            if state["completed_steps"] in (settings.stop_after, settings.total_steps):
                break
        if state["completed_steps"] == settings.stop_after:
            break
        epoch += 1
    progress.close()
    summary = _loop_summary(state, settings, time.perf_counter() - started)
    return {**summary, "checkpoint": str(checkpoint) if checkpoint else None}


def _reseed(seed: int, step: int, process: int) -> None:
    """Seed dropout from (seed, step, process): a resumed run then draws the same masks as an uninterrupted one,
    whatever random numbers data loading consumed in between (a fresh DataLoader iterator draws one)."""
    torch.manual_seed((seed * 1_000_003 + step) * 1_009 + process)


def _should_save(step: int, settings: LoopSettings) -> bool:
    every = settings.checkpoint_every and step % settings.checkpoint_every == 0
    return bool(every or step == settings.stop_after)


CHECKPOINT_MANIFEST = "COMPLETE.json"
"""Written last into a checkpoint: every file's size and sha256. A folder without it is incomplete."""
LOOP_STATE = "loop_state.json"
RUN_SETTINGS = "run_settings.json"
_STEP_FOLDER = re.compile(r"step_(\d+)")


def _save(accelerator, settings: LoopSettings, state: dict) -> Path:
    """Save a checkpoint atomically: every process writes into a hidden `.step_N.partial` folder, the main process
    adds the loop state, the run's settings and last the manifest, then renames the folder to `step_N`. A kill
    at any point leaves the previous checkpoints as they were and no `step_N` that `latest` could pick."""
    target = settings.checkpoint_dir / f"step_{state['completed_steps']}"
    partial = settings.checkpoint_dir / f".{target.name}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a killed save
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write(partial / LOOP_STATE, json.dumps(state))
        if settings.run_settings is not None:
            atomic_write(partial / RUN_SETTINGS, json.dumps(settings.run_settings, indent=1, default=str))
        files = {p.relative_to(partial).as_posix(): _file_record(p) for p in sorted(partial.rglob("*")) if p.is_file()}
        atomic_write(partial / CHECKPOINT_MANIFEST, json.dumps({"step": state["completed_steps"], "files": files}))
        publish_folder(partial, target)
    accelerator.wait_for_everyone()
    return target


def _file_record(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def find_checkpoint(resume_from: str | os.PathLike, checkpoint_dir: Path, announce: bool = True) -> Path:
    """The checkpoint folder `resume_from` names: a folder, or "latest", the newest complete `step_N` under
    `checkpoint_dir` (incomplete ones, e.g. from a kill during a save by an older version, are skipped and named).

    Raises:
        FileNotFoundError: no (complete) checkpoint there.
    """
    if str(resume_from) != "latest":
        folder = Path(resume_from)
        if not folder.is_dir():
            raise FileNotFoundError(f"No checkpoint folder at {folder}; pass a step_N folder or --resume_from latest.")
        return folder
    found = [p for p in checkpoint_dir.glob("step_*") if p.is_dir() and _STEP_FOLDER.fullmatch(p.name)]
    found.sort(key=lambda p: int(_STEP_FOLDER.fullmatch(p.name).group(1)), reverse=True)
    skipped = []
    for folder in found:
        if (folder / CHECKPOINT_MANIFEST).is_file():
            if skipped and announce:
                print(
                    f"Skipped incomplete checkpoint(s) {[str(p) for p in skipped]} (no {CHECKPOINT_MANIFEST}: "
                    f"interrupted while saving); resuming from {folder}.",
                    file=sys.stderr,
                )
            return folder
        skipped.append(folder)
    detail = f" (incomplete, without {CHECKPOINT_MANIFEST}: {[p.name for p in skipped]})" if skipped else ""
    raise FileNotFoundError(
        f"No checkpoint to resume from in {checkpoint_dir}{detail}. Start the run without --resume_from, or give "
        "--checkpoint_every N or --stop_after N so that it writes checkpoints."
    )


def verify_checkpoint(folder: Path, run_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check that `folder` is a complete, undamaged hf_posenc checkpoint of the same run; return its loop state.

    Every file must have the size and sha256 of the manifest, and the saved run settings must equal `run_settings`
    outside `RESUME_MAY_DIFFER`.

    Raises:
        ValueError: incomplete or damaged checkpoint (naming the file), or a different run (listing the fields).
    """
    fix = f"Resume from an earlier checkpoint (--resume_from {folder.parent}/step_N) or start afresh."
    if not (folder / CHECKPOINT_MANIFEST).is_file():
        if not (folder / LOOP_STATE).is_file():
            raise ValueError(f"{folder} is not a checkpoint written by hf_posenc (no {LOOP_STATE}).")
        raise ValueError(
            f"{folder} is incomplete (no {CHECKPOINT_MANIFEST}: interrupted while saving, or saved by a version of "
            f"hf_posenc without checkpoint manifests). {fix}"
        )
    manifest = read_json(folder / CHECKPOINT_MANIFEST, fix)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{folder / CHECKPOINT_MANIFEST} is not a checkpoint manifest. {fix}")
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"Checkpoint file {path} is missing. {fix}")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise ValueError(f"Checkpoint file {path} has {size} bytes, {expected['bytes']} were saved. {fix}")
        if _file_record(path)["sha256"] != expected["sha256"]:
            raise ValueError(f"Checkpoint file {path} is damaged (sha256 differs from the saved one). {fix}")
    state = read_json(folder / LOOP_STATE, fix)
    if not isinstance(state, dict) or not isinstance(state.get("completed_steps"), int):
        raise ValueError(f"{folder / LOOP_STATE} has no completed_steps. {fix}")
    if run_settings is not None and (folder / RUN_SETTINGS).is_file():
        differences = settings_differences(read_json(folder / RUN_SETTINGS, fix), _as_saved(run_settings))
        if differences:
            raise ValueError(
                f"The checkpoint {folder} belongs to a different run; resuming would mix two runs. Differences "
                f"(saved -> requested): {'; '.join(differences)}. Resume with the saved settings, or start afresh "
                "in another output_dir."
            )
    return state


def _as_saved(values: dict[str, Any]) -> dict[str, Any]:
    """The settings as they read back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(values, default=str))


def check_resume(run: TrainingSettings, checkpoint_dir: Path) -> None:
    """Refuse, before any data is loaded or model trained, a resume whose checkpoint is missing, incomplete,
    damaged or from a run with other settings (see `verify_checkpoint`); does nothing without `run.resume_from`."""
    if run.resume_from:
        verify_checkpoint(find_checkpoint(run.resume_from, checkpoint_dir, announce=False), run.to_dict())


def _resume(accelerator, settings: LoopSettings) -> dict:
    folder = find_checkpoint(settings.resume_from, settings.checkpoint_dir, announce=accelerator.is_main_process)
    state = verify_checkpoint(folder, settings.run_settings)
    if settings.stop_after is not None and settings.stop_after <= state["completed_steps"]:
        raise ValueError(
            f"stop_after={settings.stop_after} is not after the checkpoint's step {state['completed_steps']} "
            f"({folder}); give a later step or leave stop_after out."
        )
    try:
        accelerator.load_state(str(folder))
    except Exception as error:  # the files matched the manifest, so the model or optimizer must differ
        raise ValueError(
            f"Could not load the checkpoint {folder} ({type(error).__name__}: {str(error).splitlines()[0][:300]}). "
            "Was it written for another model or encoding? Start afresh in another output_dir."
        ) from error
    return state


def _loop_summary(state: dict, settings: LoopSettings, seconds: float) -> dict[str, Any]:
    losses = state["losses"]
    tail = losses[-max(1, len(losses) // 10) :] if losses else []
    return {
        "completed_steps": state["completed_steps"],
        "total_steps": settings.total_steps,
        "stopped_early": state["completed_steps"] < settings.total_steps,
        "final_loss": sum(tail) / len(tail) if tail else None,
        "losses": [round(x, 5) for x in losses],
        "learning_rates": [float(f"{x:.6g}") for x in state.get("learning_rates", [])],  # after each step
        "seconds_this_process": round(seconds, 2),
    }


def fit(
    accelerator, model, loader, run: TrainingSettings, checkpoint_dir: Path, description: str, **overrides
) -> dict:
    """Prepare model, optimizer, schedule and loader, then run `train_loop` with the run's settings.

    The steps are counted per process (each of N processes reads 1/N of an epoch's batches, padded to equal counts),
    and the schedule spans `total_steps * N` of its own steps: Accelerate steps a scheduler once per process at every
    optimizer step (the convention of Accelerate's own examples). With one process nothing changes.
    """
    lr = overrides.get("learning_rate", run.learning_rate)
    processes = accelerator.num_processes
    per_epoch = steps_per_epoch(range(math.ceil(len(loader) / processes)), run.gradient_accumulation_steps)
    total = overrides.get("max_steps") or run.max_steps or run.epochs * per_epoch
    head_lr = overrides.get("head_learning_rate")
    optimizer, scheduler = make_optimizer(model, lr, run.weight_decay, total * processes, run.warmup_ratio, head_lr)
    if run.report_to:
        accelerator.init_trackers(description, config={k: str(v) for k, v in run.to_dict().items()})
    prepared_model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if steps_per_epoch(loader, run.gradient_accumulation_steps) != per_epoch:
        raise RuntimeError(
            f"Each of the {processes} processes reads {len(loader)} batches per epoch, not the "
            f"{per_epoch * run.gradient_accumulation_steps} the schedule was made for."
        )
    settings = LoopSettings(
        total_steps=total,
        steps_per_epoch=per_epoch,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=overrides.get("checkpoint_every", run.checkpoint_every),
        resume_from=overrides.get("resume_from", run.resume_from),
        stop_after=overrides.get("stop_after", run.stop_after),
        max_grad_norm=run.max_grad_norm,
        progress=run.progress,
        description=description,
        seed=run.seed,
        run_settings=run.to_dict(),
    )
    summary = train_loop(accelerator, prepared_model, optimizer, scheduler, loader, settings)
    summary["total_batch_size"] = getattr(loader, "total_batch_size", None)
    summary["num_processes"] = accelerator.num_processes
    return summary
