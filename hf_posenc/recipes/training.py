"""The Accelerate training loop every recipe shares: model patching, the accelerator, optimizer, loop, checkpoints.

`fit` prepares a model, AdamW with a linear schedule and a loader, then runs `train_loop`: gradient accumulation,
`save_state`/`load_state` checkpoints at optimizer-step boundaries with exact resume, and an early stop that simulates
a kill. `check_lengths` refuses lengths a learned table cannot take before any data is loaded. What each recipe does
around the loop (data, evaluation, results) lives in `classification`, `mlm` and `seq2seq`.
"""

from __future__ import annotations

import json
import math
import os
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
from ..patching import patch_model
from .data import resolve_checkpoint
from .settings import RunConfig, TrainingSettings

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
    option fills the new rows; see `hf_posenc.extension`)."""
    return patch_model(
        model,
        run.encoding,
        keep_absolute=run.keep_absolute,
        max_length=run.max_length,
        replace=True,
        **run.encoding_options,
    )


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


def steps_per_epoch(loader: DataLoader, accumulation: int) -> int:
    return math.ceil(len(loader) / accumulation)


def train_loop(accelerator, model, optimizer, scheduler, loader, settings: LoopSettings) -> dict[str, Any]:
    """Train for `settings.total_steps` optimizer steps; checkpoint, resume exactly, or stop early.

    Exact resume: `save_state` stores model, optimizer, scheduler and RNG states at an optimizer-step boundary;
    the seedable sampler replays each epoch's order, `skip_first_batches` skips the batches already seen, and
    dropout is re-seeded from (seed, step) at each step (`_reseed`).
    """
    from tqdm.auto import tqdm

    state = {"completed_steps": 0, "losses": []}
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
            micro_losses = []
            progress.update(1)
            progress.set_postfix(loss=f"{state['losses'][-1]:.4f}")
            accelerator.log({f"{settings.description}/loss": state["losses"][-1]}, step=state["completed_steps"])
            if _should_save(state["completed_steps"], settings):
                _save(accelerator, settings.checkpoint_dir, state)
            if state["completed_steps"] in (settings.stop_after, settings.total_steps):
                break
        if state["completed_steps"] == settings.stop_after:
            break
        epoch += 1
    progress.close()
    return _loop_summary(state, settings, time.perf_counter() - started)


def _reseed(seed: int, step: int, process: int) -> None:
    """Seed dropout from (seed, step, process): a resumed run then draws the same masks as an uninterrupted one,
    whatever random numbers data loading consumed in between (a fresh DataLoader iterator draws one)."""
    torch.manual_seed((seed * 1_000_003 + step) * 1_009 + process)


def _should_save(step: int, settings: LoopSettings) -> bool:
    every = settings.checkpoint_every and step % settings.checkpoint_every == 0
    return bool(every or step == settings.stop_after)


def _save(accelerator, folder: Path, state: dict) -> None:
    target = folder / f"step_{state['completed_steps']}"
    accelerator.save_state(str(target))
    if accelerator.is_main_process:
        (target / "loop_state.json").write_text(json.dumps(state))
    accelerator.wait_for_everyone()


def _resume(accelerator, settings: LoopSettings) -> dict:
    folder = Path(settings.resume_from)
    if settings.resume_from == "latest":
        found = sorted(settings.checkpoint_dir.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        if not found:
            raise FileNotFoundError(f"No checkpoint to resume from in {settings.checkpoint_dir}.")
        folder = found[-1]
    if not (folder / "loop_state.json").is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint written by hf_posenc (no loop_state.json).")
    accelerator.load_state(str(folder))
    return json.loads((folder / "loop_state.json").read_text())


def _loop_summary(state: dict, settings: LoopSettings, seconds: float) -> dict[str, Any]:
    losses = state["losses"]
    tail = losses[-max(1, len(losses) // 10) :] if losses else []
    return {
        "completed_steps": state["completed_steps"],
        "total_steps": settings.total_steps,
        "stopped_early": state["completed_steps"] < settings.total_steps,
        "final_loss": sum(tail) / len(tail) if tail else None,
        "losses": [round(x, 5) for x in losses],
        "seconds_this_process": round(seconds, 2),
    }


def fit(
    accelerator, model, loader, run: TrainingSettings, checkpoint_dir: Path, description: str, **overrides
) -> dict:
    """Prepare model, optimizer, schedule and loader, then run `train_loop` with the run's settings."""
    lr = overrides.get("learning_rate", run.learning_rate)
    per_epoch = steps_per_epoch(loader, run.gradient_accumulation_steps)
    total = overrides.get("max_steps") or run.max_steps or run.epochs * per_epoch
    head_lr = overrides.get("head_learning_rate")
    optimizer, scheduler = make_optimizer(model, lr, run.weight_decay, total, run.warmup_ratio, head_lr)
    if run.report_to:
        accelerator.init_trackers(description, config={k: str(v) for k, v in run.to_dict().items()})
    prepared_model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    settings = LoopSettings(
        total_steps=total,
        steps_per_epoch=steps_per_epoch(loader, run.gradient_accumulation_steps),
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=overrides.get("checkpoint_every", run.checkpoint_every),
        resume_from=overrides.get("resume_from", run.resume_from),
        stop_after=overrides.get("stop_after", run.stop_after),
        max_grad_norm=run.max_grad_norm,
        progress=run.progress,
        description=description,
        seed=run.seed,
    )
    summary = train_loop(accelerator, prepared_model, optimizer, scheduler, loader, settings)
    summary["total_batch_size"] = getattr(loader, "total_batch_size", None)
    summary["num_processes"] = accelerator.num_processes
    return summary
