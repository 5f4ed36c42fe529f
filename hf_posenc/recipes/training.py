"""Fine-tuning with Accelerate: build and patch a model, train at one length, evaluate at many, write results.

The pieces every recipe shares live here, once: the run configuration (one dataclass, which is also the argparse
schema and the JSON schema of `recipes/configs/`), model building and patching with an early length check, the
training loop (gradient accumulation, `save_state`/`load_state` checkpoints with exact resume), evaluation with
`gather_for_metrics`, masked-LM adaptation, and the classification run that chains them. Results, tables, plots and
sweeps are in `hf_posenc.reporting`; the BART recipe is in `hf_posenc.seq2seq`.

A recipe is the Accelerate example shape: `parse_args -> get_dataloaders -> train -> evaluate -> main`, where
`get_dataloaders` is the seam tests replace (`run_classification(config, get_dataloaders=...)`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..architectures import architecture_for, row_offset
from ..encodings import ENCODINGS, canonical_name
from ..patching import patch_model, patch_spec

# ---------------------------------------------------------------------------------------------------------------------
# Configuration: one flat dataclass is the CLI, the JSON config and the record in the results
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Everything one classification run needs; JSON configs and the command line set the same fields."""

    # model and position encoding
    model: str = "all-MiniLM-L6-v2"
    encoding: str = "learned"
    encoding_options: dict = field(default_factory=dict)
    keep_absolute: bool = False
    max_length: int | None = None  # grow the learned table to this many positions (hf_posenc.extend_positions)
    label: str | None = None  # the name of this variant in tables and plots (default: derived from the encoding)
    pooling: str = "cls"  # "cls": the checkpoint's sequence-classification head; "mean": mean-pooled linear head
    # data
    dataset: str = "pang_lee"
    text_column: str | None = None
    label_column: str | None = None
    test_size: float = 0.2
    data_seed: int = 0
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    # lengths
    train_length: int = 128
    eval_lengths: list = field(default_factory=lambda: [128, 256, 512, 1024, 2048])
    eval_tokens_per_batch: int = 8192
    # optimization
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 16
    learning_rate: float = 5e-5
    head_learning_rate: float | None = None  # the new task head's learning rate (default: learning_rate)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    seed: int = 0
    # masked-LM adaptation before the task (0 steps: none)
    mlm_steps: int = 0
    mlm_dataset: str = "wikipedia"
    mlm_length: int = 128
    mlm_batch_size: int = 16
    mlm_learning_rate: float = 1e-4
    mlm_probability: float = 0.15
    mlm_eval_lengths: list = field(default_factory=list)
    mlm_max_eval_chunks: int = 32
    # bookkeeping
    output_dir: str = "recipes/results/run"
    checkpoint_every: int | None = None
    resume_from: str | None = None  # a checkpoint folder, or "latest" (the newest under output_dir/checkpoints)
    stop_after: int | None = None  # stop after this many optimizer steps (a checkpoint is written): simulates a kill
    report_to: str | None = None  # an Accelerate tracker ("tensorboard", "wandb", ...), optional
    progress: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build a config from a dict, refusing unknown keys with the list of valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown config key(s) {unknown}. Valid keys: {sorted(names)}.")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def variant(self) -> str:
        """The label of this variant: given, or the encoding with its options and MLM adaptation."""
        if self.label:
            return self.label
        name = self.encoding + (f"@{self.max_length}" if self.max_length else "")
        name += "".join(f" {k}={v}" for k, v in sorted(self.encoding_options.items()))
        return name + (" +abs" if self.keep_absolute else "") + (f" +mlm{self.mlm_steps}" if self.mlm_steps else "")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type = RunConfig) -> None:
    """Add one `--field` option per dataclass field (lists as several values, dicts as JSON)."""
    for item in dataclasses.fields(cls):
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        kind = item.type if isinstance(item.type, str) else getattr(item.type, "__name__", str(item.type))
        flag = "--" + item.name
        if kind.startswith("bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif kind.startswith("list"):
            parser.add_argument(flag, nargs="*", type=int, default=default)
        elif kind.startswith("dict"):
            parser.add_argument(flag, type=json.loads, default=default, help="JSON object")
        else:
            parser.add_argument(flag, type=_scalar_type(kind), default=default)


def _scalar_type(kind: str) -> Callable[[str], Any]:
    base = kind.split("|")[0].strip()
    return {"int": int, "float": float}.get(base, str)


def config_from_args(args: argparse.Namespace, cls: type = RunConfig):
    """The dataclass from parsed arguments, with `--config file.json` values under the command-line ones."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    if getattr(args, "config", None):
        defaults = cls()
        given = json.loads(Path(args.config).read_text())
        changed = {k: v for k, v in values.items() if v != getattr(defaults, k)}
        values = {**values, **given, **changed}
    return cls.from_dict(values)


# ---------------------------------------------------------------------------------------------------------------------
# Model: build, patch, and refuse impossible lengths before any training
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

    from .data import resolve_checkpoint

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the new head, which is expected here
    try:
        return model_class.from_pretrained(resolve_checkpoint(run.model), **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


class MeanPoolingClassifier(nn.Module):
    """A linear classifier on the attention-masked mean of the last hidden states, around any BERT-family encoder.

    Sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained to be read by mean pooling; their [CLS]
    pooler was not, so `pooling="mean"` learns from far fewer examples. `config` and `base_model` are the encoder's,
    which is all that patching, MLM transfer and `patch_spec` need.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused here; unused parameters would also stall multi-process (DDP) training
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=getattr(encoder.config, "initializer_range", 0.02))
        nn.init.zeros_(self.classifier.bias)

    @property
    def config(self):
        return self.encoder.config

    @property
    def base_model(self) -> nn.Module:
        return self.encoder

    def forward(self, input_ids, attention_mask, labels=None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        logits = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


POOLINGS = ("cls", "mean")


def build_classifier(run: RunConfig, num_labels: int) -> nn.Module:
    """The run's classifier, patched: the checkpoint's own `AutoModelForSequenceClassification` head ("cls") or a
    mean-pooling linear head ("mean")."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    if run.pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {run.pooling!r}.")
    if run.pooling == "cls":
        return apply_encoding(load_pretrained(AutoModelForSequenceClassification, run, num_labels=num_labels), run)
    encoder = apply_encoding(load_pretrained(AutoModel, run), run)
    return MeanPoolingClassifier(encoder, num_labels, getattr(encoder.config, "hidden_dropout_prob", 0.1))


def check_label_head(config, num_labels: int, class_names: list[str]) -> None:
    """A checkpoint that already has a classification head must have as many labels as the data."""
    has_head = any("ForSequenceClassification" in name for name in (config.architectures or []))
    if has_head and config.num_labels != num_labels:
        raise ValueError(
            f"The checkpoint's classification head has {config.num_labels} labels {list(config.id2label.values())}, "
            f"but the dataset has {num_labels}: {class_names}. Use a checkpoint without a head (a base model) or a "
            "dataset with the same labels."
        )


# ---------------------------------------------------------------------------------------------------------------------
# Data: token ids once, truncated per length at batch time
# ---------------------------------------------------------------------------------------------------------------------


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids a tokenizer puts before and after a single text (e.g. [CLS] ... [SEP] for BERT)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next(i for i in range(len(full)) if full[i : i + len(plain)] == plain)
    return full[:start], full[start + len(plain) :]


class TruncatingCollator:
    """Turn examples with token `ids` (no special tokens) into a padded batch truncated at `length` tokens."""

    def __init__(self, tokenizer, length: int, label_key: str = "label") -> None:
        self.length, self.label_key, self.pad = length, label_key, tokenizer.pad_token_id
        self.prefix, self.suffix = special_tokens(tokenizer)
        self.room = length - len(self.prefix) - len(self.suffix)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rows = [self.prefix + list(e["ids"][: self.room]) + self.suffix for e in examples]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [self.pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if self.label_key in examples[0]:
            batch["labels"] = torch.tensor([e[self.label_key] for e in examples])
        return batch


def tokenize_texts(split, tokenizer, max_tokens: int):
    """Add `ids` (token ids without special tokens, at most `max_tokens`) and `n_tokens` to a dataset split."""

    def encode(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return {"ids": [i[:max_tokens] for i in ids], "n_tokens": [len(i) for i in ids]}

    return split.map(encode, batched=True, desc="tokenizing")


def eval_loaders(split, tokenizer, lengths: list[int], tokens_per_batch: int) -> dict[int, DataLoader]:
    """One loader per evaluation length; longest documents first, batches sized by a token budget."""
    ordered = split.sort("n_tokens", reverse=True).select_columns(["ids", "label"])
    return {
        n: DataLoader(ordered, batch_size=max(1, tokens_per_batch // n), collate_fn=TruncatingCollator(tokenizer, n))
        for n in lengths
    }


def classification_splits(run: RunConfig):
    """The run's train and test splits (text, label), subsampled with `data_seed`; the same for every encoding."""
    from .data import load_text_classification

    data = load_text_classification(
        run.dataset,
        text_column=run.text_column,
        label_column=run.label_column,
        test_size=run.test_size,
        seed=run.data_seed,
    )
    train = _subsample(data["train"], run.max_train_examples, run.data_seed)
    return train, _subsample(data["test"], run.max_eval_examples, run.data_seed)


def classification_dataloaders(run: RunConfig, tokenizer) -> tuple[DataLoader, dict[int, DataLoader], dict]:
    """Load the run's dataset and return (train loader, {length: eval loader}, data facts)."""
    train, test = classification_splits(run)
    train = tokenize_texts(train, tokenizer, run.train_length)
    test = tokenize_texts(test, tokenizer, max(run.eval_lengths))
    train_loader = DataLoader(
        train.select_columns(["ids", "label"]),
        batch_size=run.batch_size,
        shuffle=True,
        collate_fn=TruncatingCollator(tokenizer, run.train_length),
    )
    facts = {
        "class_names": train.features["label"].names,
        "train_examples": len(train),
        "test_examples": len(test),
        "test_tokens_median": sorted(test["n_tokens"])[len(test) // 2],
    }
    return train_loader, eval_loaders(test, tokenizer, run.eval_lengths, run.eval_tokens_per_batch), facts


def _subsample(split, count: int | None, seed: int):
    if count is None or count >= len(split):
        return split
    return split.shuffle(seed=seed).select(range(count))


# ---------------------------------------------------------------------------------------------------------------------
# Accelerate: the accelerator, the training loop with exact resume, evaluation
# ---------------------------------------------------------------------------------------------------------------------


def make_accelerator(run: RunConfig, project_dir: str | Path | None = None):
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


@torch.no_grad()
def evaluate_classification(accelerator, model, loaders: dict[int, DataLoader], progress: bool = True) -> dict:
    """Accuracy and macro-F1 at each length; predictions gathered across processes with `gather_for_metrics`."""
    from tqdm.auto import tqdm

    model.eval()
    results = {}
    for length, loader in loaders.items():
        started, predictions, references = time.perf_counter(), [], []
        bar = tqdm(loader, desc=f"eval@{length}", disable=not (progress and accelerator.is_local_main_process))
        for batch in bar:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            found, labels = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"]))
            predictions.append(found.cpu())
            references.append(labels.cpu())
        scores = classification_scores(torch.cat(predictions), torch.cat(references))
        seconds = time.perf_counter() - started
        results[str(length)] = {**scores, "seconds": round(seconds, 2), "seq_per_s": round(scores["n"] / seconds, 2)}
    return results


def classification_scores(predictions: torch.Tensor, references: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 (the mean over the classes present in the references or the predictions)."""
    classes = torch.unique(torch.cat([predictions, references]))
    f1s = []
    for c in classes:
        true_positive = ((predictions == c) & (references == c)).sum().item()
        denominator = (predictions == c).sum().item() + (references == c).sum().item()
        f1s.append(2 * true_positive / denominator if denominator else 0.0)
    accuracy = (predictions == references).float().mean().item()
    return {"accuracy": round(accuracy, 5), "macro_f1": round(sum(f1s) / len(f1s), 5), "n": len(references)}


# ---------------------------------------------------------------------------------------------------------------------
# The classification run (optionally after masked-LM adaptation)
# ---------------------------------------------------------------------------------------------------------------------

DataloaderFactory = Callable[[RunConfig, Any], tuple[DataLoader, dict[int, DataLoader], dict]]


def run_classification(
    run: RunConfig, get_dataloaders: DataloaderFactory = classification_dataloaders, keep_model: bool = False
) -> dict:
    """Fine-tune `run.model` patched with `run.encoding` at `run.train_length`, evaluate at `run.eval_lengths`.

    Returns the results dict (also written as `results.json` and `results.md` under `run.output_dir` by the main
    process), with the trained model under "model" when `keep_model`. Raises ValueError for impossible lengths
    before loading data or training, and for a checkpoint head whose labels do not match the data.
    """
    from accelerate.utils import set_seed
    from transformers import AutoConfig, AutoTokenizer

    from .data import resolve_checkpoint
    from .reporting import environment, git_revision, write_run_results

    git_revision()  # recorded as of the start: the code this process runs
    timings, started = {}, time.perf_counter()
    checkpoint = resolve_checkpoint(run.model)
    config = AutoConfig.from_pretrained(checkpoint)
    check_lengths(config, run, [run.train_length, *run.eval_lengths, *run.mlm_eval_lengths])
    accelerator = make_accelerator(run)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    train_loader, loaders, facts = get_dataloaders(run, tokenizer)
    check_label_head(config, len(facts["class_names"]), facts["class_names"])
    timings["data_seconds"] = round(time.perf_counter() - started, 2)
    adapted, mlm_results = None, None
    if run.mlm_steps:
        from .mlm import adapt_mlm

        adapted, mlm_results = adapt_mlm(run, tokenizer, accelerator)
    set_seed(run.seed)
    model = build_classifier(run, len(facts["class_names"]))
    if adapted is not None:
        load_adapted_encoder(model, adapted)
    train_summary = fit(
        accelerator,
        model,
        train_loader,
        run,
        Path(run.output_dir) / "checkpoints",
        "classification",
        head_learning_rate=run.head_learning_rate,
    )
    results = {"kind": "classification", "config": run.to_dict(), "variant": run.variant, "data": facts}
    results.update(patch_spec=patch_spec(model), train=train_summary, mlm=mlm_results)
    if not train_summary["stopped_early"]:
        prepared = accelerator.prepare(*loaders.values())  # sharded per process; gather_for_metrics undoes it
        prepared = prepared if isinstance(prepared, tuple | list) else [prepared]
        results["metrics"] = evaluate_classification(accelerator, model, dict(zip(loaders, prepared)), run.progress)
    timings["total_seconds"] = round(time.perf_counter() - started, 2)
    results.update(timings=timings, environment=environment(accelerator))
    accelerator.end_training()
    if accelerator.is_main_process:
        write_run_results(results, Path(run.output_dir))
    if keep_model:
        results["model"] = accelerator.unwrap_model(model)
    return results


def fit(accelerator, model, loader, run: RunConfig, checkpoint_dir: Path, description: str, **overrides) -> dict:
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


def load_adapted_encoder(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an MLM-adapted encoder into a classifier's base model; only the pooler may be missing."""
    missing, unexpected = model.base_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("pooler.")]
    if missing or unexpected:
        raise ValueError(
            f"The adapted encoder does not fit the classifier: missing {missing}, unexpected {unexpected}."
        )


# ---------------------------------------------------------------------------------------------------------------------
# Command line: hf-posenc train / sweep / report
# ---------------------------------------------------------------------------------------------------------------------


def register_cli(subparsers) -> None:
    """Add the `train`, `sweep` and `report` subcommands to the `hf-posenc` parser."""
    train = subparsers.add_parser("train", help="fine-tune a patched model, evaluate at several lengths")
    train.add_argument(
        "--config", help="JSON file of run fields (command-line values that differ from the defaults win)"
    )
    add_config_arguments(train)
    train.set_defaults(func=_cli_train)
    sweep = subparsers.add_parser("sweep", help="several encodings x seeds on the same data; table and plot")
    sweep.add_argument("--config", required=True, help="sweep JSON, e.g. recipes/configs/study_quick.json")
    sweep.add_argument("--output_dir", help="override the config's output folder")
    sweep.add_argument("--seeds", nargs="*", type=int, help="override the config's seeds")
    sweep.set_defaults(func=_cli_sweep)
    report = subparsers.add_parser("report", help="re-render results.md / results.png from a results.json")
    report.add_argument("results", help="a results.json written by `train` or `sweep`")
    report.set_defaults(func=_cli_report)


def _cli_train(args: argparse.Namespace) -> int:
    results = run_classification(config_from_args(args))
    print((Path(results["config"]["output_dir"]) / "results.md").read_text())
    return 0


def _cli_sweep(args: argparse.Namespace) -> int:
    from .reporting import SweepConfig, run_sweep

    values = json.loads(Path(args.config).read_text())
    values.update({k: v for k, v in (("output_dir", args.output_dir), ("seeds", args.seeds)) if v})
    summary = run_sweep(SweepConfig.from_dict(values))
    print((Path(summary["sweep"]["output_dir"]) / "results.md").read_text())
    return 0


def _cli_report(args: argparse.Namespace) -> int:
    from .reporting import render, write_run_results

    path = Path(args.results)
    if not path.is_file():
        raise FileNotFoundError(f"No results file at {path}.")
    results = json.loads(path.read_text())
    if results.get("kind") == "sweep":
        render(results, path.parent)
    else:
        write_run_results(results, path.parent)
    print((path.parent / "results.md").read_text())
    return 0
