"""Masked-LM adaptation: let a swapped encoder learn its new positions on running text before the task.

A cold swap loses a pretrained model's sense of word order (its weights learned the old positions). Continued masked-LM
training on running text (by default about 100 Wikipedia articles, `hf_posenc.recipes.data.load_running_text`)
gives the encoder a chance to learn the new positions first. all-MiniLM-L6-v2 has no MLM head:
`AutoModelForMaskedLM` builds one, newly initialized, with its decoder tied to the word embeddings, and it is trained
together with the encoder. MLM loss and accuracy are measured before and after at each `mlm_eval_lengths`, on
held-out articles with the same masks for every encoding.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..architectures import architecture_for, get_submodule
from ..augmentation import METHODS, TEST_TIME_METHODS, PositionAugmentation
from ..hub.files import atomic_write
from .adaptation import adaptation_key, cached_adaptation
from .data import load_running_text, resolve_checkpoint, special_tokens
from .methods import (
    augment_evaluation_batches,
    augment_loader,
    augmentation_target,
    check_methods,
    cover_positions,
    merge_lora,
    select_trainable,
)
from .results import environment, markdown_table, write_json
from .settings import RunConfig
from .training import apply_encoding, check_lengths, fit, load_pretrained, make_accelerator, make_optimizer


def chunk_running_text(texts: list[str], tokenizer, length: int, max_chunks: int | None = None) -> list[list[int]]:
    """Cut concatenated documents into chunks of `length` tokens including special tokens (one document per chunk)."""
    prefix, suffix = special_tokens(tokenizer)
    room = length - len(prefix) - len(suffix)
    chunks = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        chunks += [ids[i : i + room] for i in range(0, len(ids) - room + 1, room)]
        if max_chunks is not None and len(chunks) >= max_chunks:
            break
    return [prefix + c + suffix for c in chunks[:max_chunks]]


def mask_tokens(input_ids: torch.Tensor, tokenizer, probability: float, generator: torch.Generator | None = None):
    """BERT's masking: pick `probability` of the non-special tokens; 80% [MASK], 10% random, 10% kept."""
    labels = input_ids.clone()
    special = torch.isin(input_ids, torch.tensor(tokenizer.all_special_ids))
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special
    labels[~chosen] = -100
    draw = torch.rand(input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[chosen & (draw < 0.8)] = tokenizer.mask_token_id
    randomized = chosen & (draw >= 0.8) & (draw < 0.9)
    masked[randomized] = torch.randint(len(tokenizer), input_ids.shape, generator=generator)[randomized]
    return masked, labels


class MaskingCollator:
    """Stack equal-length chunks and mask them (training draws from the global RNG, which Accelerate restores)."""

    def __init__(self, tokenizer, probability: float) -> None:
        self.tokenizer, self.probability = tokenizer, probability

    def __call__(self, chunks: list[list[int]]) -> dict[str, torch.Tensor]:
        input_ids, labels = mask_tokens(torch.tensor(chunks), self.tokenizer, self.probability)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def mlm_dataloaders(run: RunConfig, tokenizer) -> tuple[DataLoader, dict[int, list[dict]]]:
    """Running text split by document: training chunks at `mlm_length`, fixed masked evaluation sets per length."""
    texts = list(load_running_text(run.mlm_dataset, seed=run.data_seed)["text"])
    if len(texts) < 2:
        raise ValueError(
            f"{run.mlm_dataset!r} has {len(texts)} text(s); MLM adaptation needs at least 2 (train, held out)."
        )
    held_out = max(1, len(texts) // 10)
    train_texts, eval_texts = texts[held_out:], texts[:held_out]
    train_chunks = chunk_running_text(train_texts, tokenizer, run.mlm_length)
    if not train_chunks:
        raise ValueError(f"{run.mlm_dataset!r} has no document of {run.mlm_length} tokens to train on.")
    loader = DataLoader(
        train_chunks,
        batch_size=run.mlm_batch_size,
        shuffle=True,
        collate_fn=MaskingCollator(tokenizer, run.mlm_probability),
    )
    generator = torch.Generator().manual_seed(run.data_seed)
    eval_sets = {}
    for length in run.mlm_eval_lengths:
        chunks = chunk_running_text(eval_texts, tokenizer, length, run.mlm_max_eval_chunks)
        batches = [
            torch.tensor(chunks[i : i + max(1, run.eval_tokens_per_batch // length)])
            for i in range(0, len(chunks), max(1, run.eval_tokens_per_batch // length))
        ]
        eval_sets[length] = [
            dict(zip(("input_ids", "labels"), mask_tokens(b, tokenizer, run.mlm_probability, generator)))
            for b in batches
        ]
    return loader, eval_sets


class MaskedPositionsMLM(nn.Module):
    """Runs a masked-LM model's prediction head on the masked positions only.

    The head's vocabulary projection dominates the cost of a step (30522 x 384 per token for MiniLM); with 15% of the
    tokens masked this is about 6x cheaper and gives the same loss. Families whose head is not one module taking
    hidden states (`cls` in BERT/ELECTRA-style models, `lm_head` in RoBERTa) fall back to the full forward.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.head = next(
            (getattr(model, n) for n in ("cls", "lm_head") if isinstance(getattr(model, n, None), nn.Module)), None
        )

    @property
    def base_model(self) -> nn.Module:
        return self.model.base_model

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None):
        from transformers.modeling_outputs import MaskedLMOutput

        chosen = labels != -100
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if position_ids is not None:  # position augmentation
            inputs["position_ids"] = position_ids
        if self.head is None:
            logits = self.model(**inputs).logits[chosen]
        else:
            hidden = self.model.base_model(**inputs).last_hidden_state
            logits = self.head(hidden[chosen])
        loss = nn.functional.cross_entropy(logits.float(), labels[chosen])
        return MaskedLMOutput(loss=loss, logits=logits)


def head_parameters(model: MaskedPositionsMLM) -> list[nn.Parameter]:
    """The MLM head's own parameters: those outside the encoder (a decoder tied to the word embeddings excepted)."""
    encoder = {id(p) for p in model.base_model.parameters()}
    return [p for p in model.parameters() if id(p) not in encoder]


def warm_up_head(model: MaskedPositionsMLM, loader, steps: int, learning_rate: float) -> dict:
    """Train only the MLM head's own parameters for `steps` batches of `loader` (AdamW at a constant
    `learning_rate`), the encoder and the tied word embeddings frozen; trainability is restored afterwards.

    A newly initialized head (all-MiniLM-L6-v2 has none) starts at the loss of a uniform guess (ln 30522 = 10.3);
    trained together with the encoder from there, its random projections send large, meaningless gradients into every
    layer.
    Fitting the head to the frozen encoder first is the usual remedy (linear probing before fine-tuning, Kumar et al.
    2022, arXiv:2202.10054). Returns the steps, seconds and per-step losses.
    """
    own = head_parameters(model)
    if not own:
        raise ValueError("The masked-LM model has no head parameters of its own to warm up.")
    flags = {parameter: parameter.requires_grad for parameter in model.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in own:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(own, lr=learning_rate, weight_decay=0.0)
    device, losses, started = next(model.parameters()).device, [], time.perf_counter()
    model.train()
    try:
        for batch in itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader)), steps):
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(loss.item(), 5))
    finally:
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)
    return {"steps": steps, "seconds": round(time.perf_counter() - started, 2), "losses": losses}


@torch.no_grad()
def evaluate_mlm(model, eval_sets: dict[int, list[dict]]) -> dict[str, dict]:
    """Masked-token loss and accuracy at each length (same masks for every encoding); `model` is a
    `MaskedPositionsMLM`. A batch's `position_ids`, when it has them (test-time randomized positions), are used."""
    model.eval()
    results = {}
    for length, batches in eval_sets.items():
        loss_sum, correct, count, started = 0.0, 0, 0, time.perf_counter()
        device = next(model.parameters()).device
        for batch in batches:
            labels = batch["labels"].to(device)
            chosen = labels != -100
            inputs = {k: batch[k].to(device) for k in ("input_ids", "position_ids") if k in batch}
            logits = model(**inputs, labels=labels).logits  # masked positions only
            loss_sum += nn.functional.cross_entropy(logits.float(), labels[chosen], reduction="sum").item()
            correct += (logits.argmax(-1) == labels[chosen]).sum().item()
            count += chosen.sum().item()
        results[str(length)] = {
            "mlm_loss": round(loss_sum / max(count, 1), 5),
            "mlm_accuracy": round(correct / max(count, 1), 5),
            "masked_tokens": count,
            "chunks": sum(len(b["input_ids"]) for b in batches),
            "seconds": round(time.perf_counter() - started, 2),
        }
    return results


def build_mlm_model(run: RunConfig) -> nn.Module:
    """A masked-LM model from the checkpoint; a missing MLM head (all-MiniLM-L6-v2 has none) is newly initialized
    and its decoder tied to the word embeddings, then the run's encoding is applied."""
    from transformers import AutoModelForMaskedLM

    model = load_pretrained(AutoModelForMaskedLM, run)
    return apply_encoding(model, run)


def mlm_seed(run: RunConfig) -> int:
    """The seed of the masked-LM phase: `mlm_seed`, or the run's seed."""
    return run.seed if run.mlm_seed is None else run.mlm_seed


def adapt_mlm(run: RunConfig, tokenizer, accelerator) -> tuple[dict[str, torch.Tensor], dict]:
    """Continue masked-LM training after the swap; return the adapted encoder's state and MLM results.

    With `mlm_cache` (the default) the result is looked up in the package cache by a hash of every setting that
    affects it (`hf_posenc.recipes.adaptation.adaptation_key`) and computed only when absent.
    """
    if not run.mlm_cache:
        return train_mlm(run, tokenizer, accelerator)
    target = augmentation_target(run) if run.position_augmentation != "none" else None
    key = adaptation_key(run, resolve_checkpoint(run.model), mlm_seed(run), target)
    key["mlm_evaluation"] = [run.mlm_eval_lengths, run.mlm_max_eval_chunks]
    if run.position_augmentation in TEST_TIME_METHODS:  # an entry evaluated with plain positions is not reused
        key["mlm_evaluation"].append(f"test-time {run.position_augmentation} positions")
    return cached_adaptation(key, lambda: train_mlm(run, tokenizer, accelerator), log=accelerator.print)


def train_mlm(run: RunConfig, tokenizer, accelerator) -> tuple[dict[str, torch.Tensor], dict]:
    """Masked-LM training of the patched encoder (with the run's augmentation, `train_only` and LoRA, adapters
    merged at the end), seeded by `mlm_seed`: the adapted encoder's state and the MLM results."""
    from accelerate.utils import set_seed

    seed = mlm_seed(run)
    set_seed(seed)
    model = MaskedPositionsMLM(build_mlm_model(run))
    model = select_trainable(model, run).to(accelerator.device)
    loader, eval_sets = mlm_dataloaders(run, tokenizer)
    loader = augment_loader(loader, model, dataclasses.replace(run, seed=seed))
    eval_sets = augment_evaluation_batches(eval_sets, model, dataclasses.replace(run, seed=seed))
    results = {"before": evaluate_mlm(model, eval_sets)} if eval_sets else {}
    if run.mlm_head_warmup_steps:
        results["head_warmup"] = warm_up_head(model, loader, run.mlm_head_warmup_steps, run.mlm_head_learning_rate)
        if eval_sets:
            results["head_warmup"]["after"] = evaluate_mlm(model, eval_sets)
    overrides = {
        "learning_rate": run.mlm_learning_rate,
        "max_steps": run.mlm_steps,
        "checkpoint_every": None,
        "resume_from": None,
        "stop_after": None,
    }
    data_seed = accelerator.dataloader_config.data_seed
    accelerator.dataloader_config.data_seed = seed  # the MLM data order follows the MLM seed, not the task's
    try:
        results["train"] = fit(
            accelerator,
            model,
            loader,
            dataclasses.replace(run, seed=seed),
            Path(run.output_dir) / "mlm_checkpoints",
            "mlm",
            **overrides,
        )
    finally:
        accelerator.dataloader_config.data_seed = data_seed
    unwrapped = merge_lora(accelerator.unwrap_model(model))
    if eval_sets:
        results["after"] = evaluate_mlm(unwrapped, eval_sets)
    state = {k: v.detach().clone().cpu() for k, v in unwrapped.base_model.state_dict().items()}
    accelerator.free_memory()  # the classification phase prepares its own model, optimizer and loader
    return state, results


def run_mlm_adaptation(run: RunConfig) -> dict:
    """MLM adaptation alone: train `run.mlm_steps` steps, report MLM loss and accuracy before/after per length.

    Writes `results.json` and `results.md` under `run.output_dir`. To adapt and then fine-tune in one command, set
    `mlm_steps` on a classification run (`hf_posenc.recipes.classification.run_classification`).
    """
    from transformers import AutoConfig, AutoTokenizer

    if run.mlm_steps < 1:
        raise ValueError(f"mlm_steps must be at least 1, got {run.mlm_steps}.")
    started = time.perf_counter()
    checkpoint = resolve_checkpoint(run.model)
    config = AutoConfig.from_pretrained(checkpoint)
    check_lengths(config, run, [run.mlm_length, *run.mlm_eval_lengths])
    check_methods(config, run, [run.mlm_length])
    accelerator = make_accelerator(run)
    _, results = adapt_mlm(run, AutoTokenizer.from_pretrained(checkpoint), accelerator)
    record = {"kind": "mlm", "variant": run.variant, "config": run.to_dict(), "mlm": results}
    record.update(timings={"total_seconds": round(time.perf_counter() - started, 2)}, environment=environment())
    if accelerator.is_main_process:
        folder = Path(run.output_dir)
        write_json(record, folder / "results.json")
        lengths = [int(n) for n in results.get("after", {})]
        summary = {
            f"{run.variant} {when}": {n: {k: [v] for k, v in m.items()} for n, m in results[when].items()}
            for when in ("before", "after")
            if when in results
        }
        tables = (
            [markdown_table(summary, lengths, metric) for metric in ("mlm_loss", "mlm_accuracy")] if lengths else []
        )
        atomic_write(
            folder / "results.md", f"# MLM adaptation: {run.variant} on {run.mlm_dataset}\n\n" + "\n".join(tables)
        )
    return record


# ---------------------------------------------------------------------------------------------------------------------
# adapt: the one-call masked-LM adaptation with position augmentation, for any model and texts
# ---------------------------------------------------------------------------------------------------------------------


def adapt(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    *,
    target_length: int,
    steps: int,
    augmentation: str = "pose",
    train_length: int = 128,
    learning_rate: float = 1e-4,
    batch_size: int = 16,
    mlm_probability: float = 0.15,
    seed: int = 0,
    head_warmup_steps: int = 0,
    head_learning_rate: float = 1e-3,
    output_dir: str | os.PathLike | None = None,
) -> nn.Module:
    """Teach a (patched) encoder positions up to `target_length` by masked-LM training on short windows.

    Masked-LM training on `train_length`-token chunks of `texts` whose position ids are spread over
    `[0, target_length)` by position augmentation (PoSE, Zhu et al. 2023, arXiv:2309.10400; or randomized positions,
    Ruoss et al. 2023, arXiv:2305.16843), so the model meets the distances of long inputs at the cost of short ones.
    A model without a masked-LM head (e.g. all-MiniLM-L6-v2) gets a new one, tied to its word embeddings.

    Args:
        model: a base model (`AutoModel`) or a masked-LM model, patched or not; trained in place.
        tokenizer: its tokenizer.
        texts: running text to train on (at least one chunk of `train_length` tokens).
        target_length: the length to prepare the model for; a learned position table must have as many rows
            (`hf_posenc.extend_positions` first).
        steps: optimizer steps.
        augmentation: "pose", "randomized" or "none".
        train_length: tokens per training chunk, special tokens included.
        learning_rate: AdamW's peak learning rate (linear warm-up over 10% of the steps, then decay).
        batch_size: chunks per step.
        mlm_probability: fraction of the tokens masked.
        seed: seed of the head's initialization, the data order, the masks and the augmentation.
        head_warmup_steps: steps that first train only the MLM head's own parameters, the encoder frozen (see
            `warm_up_head`; for a model whose head is new, such as all-MiniLM-L6-v2); 0: none.
        head_learning_rate: the warm-up's learning rate (AdamW, constant).
        output_dir: when given, the adapted model and the tokenizer are saved there (atomically: a complete folder
            or none), loadable with `hf_posenc.from_pretrained` or transformers' Auto classes after
            `import hf_posenc`.

    Returns:
        `model`, adapted, in eval mode.

    Raises:
        ValueError: an unknown `augmentation`, `steps < 1`, `target_length < train_length`, a learned table shorter
            than `target_length`, a negative `head_warmup_steps` or a `head_learning_rate` that is not positive,
            texts too short for one chunk, or a non-empty `output_dir`; all before any training.

    Example:
        ```python
        >>> import hf_posenc
        >>> from transformers import AutoModel, AutoTokenizer
        >>> model = hf_posenc.patch_model(AutoModel.from_pretrained(checkpoint), "t5")  # doctest: +SKIP
        >>> hf_posenc.adapt(model, tokenizer, texts, target_length=2048, steps=200)  # doctest: +SKIP
        ```
    """
    from accelerate.utils import set_seed

    _check_adapt(model, augmentation, steps, train_length, target_length)
    if isinstance(head_warmup_steps, bool) or not isinstance(head_warmup_steps, int) or head_warmup_steps < 0:
        raise ValueError(f"head_warmup_steps must be an int >= 0, got {head_warmup_steps!r}.")
    if not head_learning_rate > 0:
        raise ValueError(f"head_learning_rate must be positive, got {head_learning_rate!r}.")
    if output_dir is not None and Path(output_dir).exists() and any(Path(output_dir).iterdir()):
        raise ValueError(f"output_dir {str(output_dir)!r} exists and is not empty; choose a new folder.")
    chunks = chunk_running_text(texts, tokenizer, train_length)
    if not chunks:
        raise ValueError(f"The texts hold no chunk of {train_length} tokens; give longer texts or a shorter length.")
    set_seed(seed)
    wrapped = MaskedPositionsMLM(_with_mlm_head(model))
    device = next(model.parameters()).device
    collate = MaskingCollator(tokenizer, mlm_probability)
    if augmentation != "none":
        cover_positions(wrapped, target_length)
        collate = PositionAugmentation.for_model(
            wrapped.base_model, target_length, augmentation, seed, collator=collate
        )
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(chunks, batch_size=batch_size, shuffle=True, collate_fn=collate, generator=generator)
    if head_warmup_steps:
        warm_up_head(wrapped, loader, head_warmup_steps, head_learning_rate)
    optimizer, scheduler = make_optimizer(wrapped, learning_rate, 0.01, steps, 0.1)
    wrapped.train()
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for batch in itertools.islice(batches, steps):
        loss = wrapped(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        nn.utils.clip_grad_norm_(wrapped.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    model.eval()
    if output_dir is not None:
        save_atomically(model, tokenizer, Path(output_dir))
    return model


def _check_adapt(model: nn.Module, augmentation: str, steps: int, train_length: int, target_length: int) -> None:
    if augmentation not in ("none", *METHODS):
        raise ValueError(f"augmentation must be one of {('none', *METHODS)}, got {augmentation!r}.")
    if steps < 1 or train_length < 4:
        raise ValueError(f"steps must be >= 1 and train_length >= 4, got {steps} and {train_length}.")
    if target_length < train_length:
        raise ValueError(f"target_length ({target_length}) must be at least train_length ({train_length}).")
    base = model.base_model
    stack = architecture_for(base).stacks[0]
    table = get_submodule(base, stack.table)
    weight = getattr(table, "weight", None)
    if isinstance(weight, torch.Tensor):
        rows = weight.shape[0] - stack.offset(base.config)
        if rows < target_length:
            raise ValueError(
                f"The model's learned position table has {rows} positions, fewer than target_length "
                f"({target_length}). Extend it first: hf_posenc.extend_positions(model, {target_length}) "
                f"(hf-posenc adapt: --max_length {target_length}), or patch a relative encoding."
            )


def _with_mlm_head(model: nn.Module) -> nn.Module:
    """`model` itself when it has a masked-LM head, else a new masked-LM model of its family around it (the
    decoder tied to its word embeddings)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if model.base_model is not model:
        return model
    name = MODEL_FOR_MASKED_LM_MAPPING_NAMES.get(model.config.model_type)
    if name is None:
        raise ValueError(f"No masked-LM head is known for model type {model.config.model_type!r}.")
    mlm = getattr(transformers, name)(model.config)
    setattr(mlm, mlm.base_model_prefix, model)
    mlm.tie_weights()
    return mlm.to(next(model.parameters()).device)


def save_atomically(model: nn.Module, tokenizer, folder: Path) -> None:
    """`save_pretrained` of model and tokenizer into a temporary sibling folder, then renamed into `folder`."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
