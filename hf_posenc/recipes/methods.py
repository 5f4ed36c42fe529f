"""Training-side "train short, test long" methods of the recipes: position augmentation, random training windows,
and what trains (position parameters only, LoRA).

* Position augmentation (`position_augmentation`, `augmentation_target`): the training collator is wrapped in the
  core's `hf_posenc.augmentation.PositionAugmentation`, so short windows carry position ids spread over the target
  length (PoSE, Zhu et al. 2023, arXiv:2309.10400; randomized positions, Ruoss et al. 2023, arXiv:2305.16843).
  Randomized positions are drawn at test time too, as published, in every recipe's evaluation (`augment_evaluation`,
  `augment_evaluation_batches`); PoSE evaluates plainly.
* Random training windows (`train_windows="random"`, `windows_per_document`): `RandomWindows` hands out a window of
  `train_length` tokens from anywhere in each document, drawn afresh every epoch from (seed, epoch, item), so a
  short fine-tune sees all of a long document's evidence while never reading more than `train_length` tokens at once.
* What trains (`train_only`, `lora_r`): `select_trainable` freezes everything but the position parameters and the task
  head, or injects LoRA adapters (Hu et al. 2021, arXiv:2106.09685) into the attention projections through peft.

`check_methods` validates all of them against the checkpoint's config before any data is read or any step taken.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..architectures import architecture_for, get_submodule, set_submodule
from ..augmentation import TEST_TIME_METHODS, PositionAugmentation
from ..extension import set_max_length
from .settings import RunConfig, TrainingSettings
from .training import supported_length

__all__ = [
    "AUGMENTATIONS",
    "EncoderPositions",
    "TRAIN_ONLY",
    "TRAIN_WINDOWS",
    "RandomWindows",
    "augment_evaluation",
    "augment_evaluation_batches",
    "augment_loader",
    "augmentation_target",
    "check_methods",
    "cover_positions",
    "merge_lora",
    "position_parameter_names",
    "select_trainable",
    "trainable_summary",
]

AUGMENTATIONS = ("none", "pose", "randomized")
"""`--position_augmentation` choices."""

TRAIN_WINDOWS = ("first", "random")
"""`--train_windows` choices: each document's first window, or a random one every epoch."""

TRAIN_ONLY = ("all", "positions")
"""`--train_only` choices: every parameter, or the position parameters and the task head."""

LORA_TARGETS = {"bart": ["q_proj", "v_proj"]}
"""Attention projections LoRA adapts, by model type; BERT-family models name them `query` and `value`."""


# ---------------------------------------------------------------------------------------------------------------------
# Validation: before any data is read or any step taken
# ---------------------------------------------------------------------------------------------------------------------


def augmentation_target(run: TrainingSettings) -> int:
    """The length augmented position ids reach: `augmentation_target`, or the largest evaluation length."""
    return run.augmentation_target or max(run.eval_lengths)


def check_methods(config, run: TrainingSettings, training_lengths: list[int]) -> None:
    """Refuse method settings that cannot work on this checkpoint, naming the valid values or the fix.

    Args:
        config: the checkpoint's config (for the learned table's length).
        run: the run's settings.
        training_lengths: the lengths the run trains at (the task's, and the masked-LM phase's when it has one).
    """
    _check_augmentation(config, run, training_lengths)
    if isinstance(run, RunConfig):
        _check_windows(run)
        _check_trainable(run)


def _check_augmentation(config, run: TrainingSettings, training_lengths: list[int]) -> None:
    if run.position_augmentation not in AUGMENTATIONS:
        raise ValueError(f"position_augmentation must be one of {AUGMENTATIONS}, got {run.position_augmentation!r}.")
    if run.position_augmentation == "none":
        if run.augmentation_target is not None:
            raise ValueError(
                "augmentation_target is set but position_augmentation is 'none'; choose pose or randomized."
            )
        return
    target = augmentation_target(run)
    if run.position_augmentation in TEST_TIME_METHODS:
        read = max(_evaluated_lengths(run))
        if target < read:
            raise ValueError(
                f"augmentation_target ({target}) is below an evaluation length ({read}): "
                f"{run.position_augmentation!r} positions are drawn at test time too, from [0, augmentation_target). "
                f"Set --augmentation_target to at least {read}, or leave it unset (the largest evaluation length)."
            )
    if target < max(training_lengths):
        raise ValueError(
            f"augmentation_target ({target}) is below the training length ({max(training_lengths)}): augmentation "
            f"spreads a short window's positions over a longer range. Set --augmentation_target to at least "
            f"{max(training_lengths)} (e.g. the largest evaluation length)."
        )
    limit = supported_length(config, run) if isinstance(run, RunConfig) else None
    if limit is not None and target > limit:
        raise ValueError(
            f"Position augmentation to {target} positions needs a learned table of at least {target} rows, but "
            f"{run.model!r} with encoding {run.encoding!r} has {limit}. Extend the table first with "
            f"--max_length {target}, or lower --augmentation_target."
        )


class EncoderPositions(nn.Module):
    """Run an encoder-decoder with augmented `position_ids` for its encoder only (the decoder keeps its own
    positions): the encoder is called first and its output handed to the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    @property
    def base_model(self) -> nn.Module:
        return self.model.base_model

    def forward(self, input_ids, attention_mask, labels=None, position_ids=None, **kwargs):
        if position_ids is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        encoded = self.model.get_encoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        )
        return self.model(attention_mask=attention_mask, encoder_outputs=encoded, labels=labels, **kwargs)

    def generate(self, input_ids, attention_mask, position_ids=None, **kwargs):
        """The model's `generate`, its encoder run once with `position_ids` when given (test-time ids)."""
        if position_ids is not None:
            kwargs["encoder_outputs"] = self.model.get_encoder()(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            )
        return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def _evaluated_lengths(run: TrainingSettings) -> list[int]:
    """Every input length a run evaluates at: its evaluation lengths, its chunk window, its masked-LM lengths."""
    lengths = list(run.eval_lengths)
    if isinstance(run, RunConfig):
        lengths += [run.chunk_window] if run.chunk_window else []
        lengths += run.mlm_eval_lengths if run.mlm_steps else []
    return lengths


def _check_windows(run: RunConfig) -> None:
    if run.train_windows not in TRAIN_WINDOWS:
        raise ValueError(f"train_windows must be one of {TRAIN_WINDOWS}, got {run.train_windows!r}.")
    if run.windows_per_document < 1:
        raise ValueError(f"windows_per_document must be at least 1, got {run.windows_per_document}.")
    if run.windows_per_document > 1 and run.train_windows != "random":
        raise ValueError(
            "windows_per_document > 1 needs --train_windows random (the first window is always the same)."
        )


def _check_trainable(run: RunConfig) -> None:
    if run.train_only not in TRAIN_ONLY:
        raise ValueError(f"train_only must be one of {TRAIN_ONLY}, got {run.train_only!r}.")
    if run.lora_r < 0 or (run.lora_alpha is not None and run.lora_alpha < 1):
        raise ValueError(f"lora_r must be >= 0 and lora_alpha >= 1, got {run.lora_r} and {run.lora_alpha}.")
    if run.lora_r:
        _peft()


def _peft():
    try:
        import peft
    except ImportError as error:
        raise ImportError(
            "LoRA (--lora_r) needs peft, an optional extra: pip install hf-posenc[peft] (or pip install 'peft>=0.13')."
        ) from error
    return peft


# ---------------------------------------------------------------------------------------------------------------------
# Position augmentation and training windows: the training loader
# ---------------------------------------------------------------------------------------------------------------------


def augment_loader(loader: DataLoader, model: nn.Module, run: TrainingSettings) -> DataLoader:
    """Wrap `loader`'s collator in `PositionAugmentation` (seeded by `run.seed`) when the run asks for it.

    The ids follow the model's convention (`PositionAugmentation.for_model`: RoBERTa-style tables count rows).
    A batch's ids depend on the seed, the epoch and the batch alone, so exact resume draws the same ids.
    """
    if run.position_augmentation == "none":
        return loader
    cover_positions(model, augmentation_target(run))
    loader.collate_fn = PositionAugmentation.for_model(
        model.base_model,
        augmentation_target(run),
        run.position_augmentation,
        run.seed,
        collator=loader.collate_fn,
    )
    return loader


def augment_evaluation(loaders: dict[int, DataLoader], model: nn.Module, run: TrainingSettings) -> dict:
    """The evaluation loaders, with augmented position ids when the run's method draws them at test time too
    (`hf_posenc.augmentation.TEST_TIME_METHODS`: randomized positions, Ruoss et al. 2023); otherwise `loaders` as they
    are. New loaders over the same datasets and batches; the ids are seeded by `run.seed` and each batch, so an
    evaluation is repeatable."""
    if run.position_augmentation not in TEST_TIME_METHODS:
        return loaders
    return {
        length: DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            collate_fn=PositionAugmentation.for_model(
                model.base_model,
                augmentation_target(run),
                run.position_augmentation,
                run.seed,
                collator=loader.collate_fn,
            ),
        )
        for length, loader in loaders.items()
    }


def augment_evaluation_batches(batches: dict[int, list[dict]], model: nn.Module, run: TrainingSettings) -> dict:
    """`augment_evaluation` for evaluation sets kept as lists of ready batches (the masked-LM phase's): each batch
    gets the ids one collator call would give it; otherwise `batches` as they are."""
    if run.position_augmentation not in TEST_TIME_METHODS:
        return batches
    collate = PositionAugmentation.for_model(
        model.base_model, augmentation_target(run), run.position_augmentation, run.seed, collator=_the_batch
    )
    return {length: [collate([batch]) for batch in found] for length, found in batches.items()}


def _the_batch(items: list[dict]) -> dict:
    return items[0]


def cover_positions(model: nn.Module, target_length: int) -> None:
    """Let a model without a learned table take position ids up to `target_length - 1` in short inputs.

    BERT-style embeddings index their `token_type_ids` buffer by position id, and the buffers grow with the input's
    length, not with the ids a caller passes; augmented ids past the buffers would index out of range. For stacks
    without a learned table this raises the recorded limit (`hf_posenc.set_max_length`, bookkeeping only); a learned
    table was already checked to have `target_length` rows, and its buffers are as long.
    """
    base = model.base_model
    for stack in architecture_for(base).stacks:
        embeddings = get_submodule(base, stack.embeddings) if stack.embeddings else None
        buffer = getattr(embeddings, "token_type_ids", None)
        short = isinstance(buffer, torch.Tensor) and buffer.shape[-1] < target_length + stack.offset(base.config)
        if short and not isinstance(get_submodule(base, stack.table), nn.Embedding):
            set_max_length(base, target_length)
            return


class RandomWindows(Dataset):
    """Each document's tokens cut to a random window of `room` tokens, `windows` items per document.

    Item `i` is window `i % windows` of document `i // windows`; its start is drawn from (seed, epoch, i), so an
    epoch is repeatable (and a resumed run reads the same windows) and every epoch draws new windows. The training
    loop calls `set_epoch` at the start of each epoch. Documents of at most `room` tokens are kept whole.

    Args:
        documents: a sequence of examples with `ids` (the whole document's token ids, no special tokens).
        room: tokens per window (the training length minus the special tokens).
        windows: items (windows) per document and epoch.
        seed: the run's seed.
    """

    def __init__(self, documents, room: int, windows: int = 1, seed: int = 0) -> None:
        self.documents, self.room, self.windows, self.seed, self.epoch = documents, room, windows, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.documents) * self.windows

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = dict(self.documents[index // self.windows])
        ids = example["ids"]
        if len(ids) > self.room:
            start = int(np.random.default_rng([self.seed, self.epoch, index]).integers(len(ids) - self.room + 1))
            example["ids"] = ids[start : start + self.room]
        return example


# ---------------------------------------------------------------------------------------------------------------------
# What trains: position parameters and the head, LoRA
# ---------------------------------------------------------------------------------------------------------------------


def position_parameter_names(model: nn.Module) -> list[str]:
    """Names (in `model.named_parameters()`) of the position parameters: those the patch installed (`posenc`
    submodules: relative distance embeddings, T5 buckets) and each stack's learned absolute table when present."""
    base = model.base_model
    prefix = next(name for name, module in model.named_modules() if module is base)
    prefix = f"{prefix}." if prefix else ""
    tables = set()
    for stack in architecture_for(base).stacks:
        table = get_submodule(base, stack.table)
        tables |= {id(p) for p in table.parameters()} if table is not None else set()
    return [
        name
        for name, parameter in model.named_parameters()
        if ".posenc." in f".{name}" or (name.startswith(prefix) and id(parameter) in tables)
    ]


def select_trainable(model: nn.Module, run: RunConfig) -> nn.Module:
    """Apply `train_only` and `lora_r` to `model` (in place; returned for chaining).

    `train_only="positions"`: only the position parameters and the task head (the parameters outside
    `model.base_model`, word embeddings tied into a head excepted) train; a ValueError names the encodings that have
    position parameters when this one has none. `lora_r`: LoRA adapters on the attention query and value projections
    (peft's `inject_adapter_in_model`, which keeps the model's own class), plus the task head and the parameters the
    patch installed (which start untrained), plus the learned absolute table with `train_only="positions"`.
    """
    if run.train_only == "all" and not run.lora_r:
        return model
    positions = position_parameter_names(model)
    if run.train_only == "positions" and not positions:
        raise ValueError(
            f"train_only='positions' needs position parameters, but encoding {run.encoding!r}"
            f"{' (keep_absolute=True)' if run.keep_absolute else ''} has none (alibi, rope, sinusoidal and nezha are "
            "fixed functions of position). Use a learned encoding (learned, relative_key, relative_key_query, t5), "
            "--keep_absolute with a relative encoding, or --train_only all / --lora_r N."
        )
    trainable = set(positions if run.train_only == "positions" else [n for n in positions if ".posenc." in f".{n}"])
    base = {id(p) for p in model.base_model.parameters()}
    trainable |= {name for name, p in model.named_parameters() if id(p) not in base}
    if run.lora_r:
        model = _inject_lora(model, run)
        trainable |= {name for name, _ in model.named_parameters() if "lora_" in name}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)
    return model


def _inject_lora(model: nn.Module, run: RunConfig) -> nn.Module:
    peft = _peft()
    model_type = model.base_model.config.model_type
    config = peft.LoraConfig(
        r=run.lora_r,
        lora_alpha=run.lora_alpha or 2 * run.lora_r,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS.get(model_type, ["query", "value"]),
    )
    return peft.inject_adapter_in_model(config, model)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold injected LoRA adapters into the weights they adapt and put the plain layers back (in place), so the
    model's state dict has its original keys again; a model without adapters is returned unchanged."""
    if not any("lora_" in name for name, _ in model.named_parameters()):
        return model
    lora = _peft().tuners.lora
    for name, module in list(model.named_modules()):
        if isinstance(module, lora.LoraLayer):
            module.merge()
            set_submodule(model, name, module.get_base_layer())
    return model


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Parameter counts for the results: trainable and total."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_parameters": trainable, "total_parameters": total}
