"""Masked-LM adaptation: let a swapped encoder learn its new positions on running text before the task.

A cold swap loses a pretrained model's sense of word order (its weights learned the old positions). Continued masked-LM
training on running text (by default about 100 Wikipedia articles, `hf_posenc.recipes.data.load_running_text`)
gives the encoder a chance to learn the new positions first. all-MiniLM-L6-v2 has no MLM head:
`AutoModelForMaskedLM` builds one, newly initialized, with its decoder tied to the word embeddings, and it is trained
together with the encoder. MLM loss and accuracy are measured before and after at each `mlm_eval_lengths`, on
held-out articles with the same masks for every encoding.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..hub.files import atomic_write
from .data import load_running_text, resolve_checkpoint, special_tokens
from .results import environment, markdown_table, write_json
from .settings import RunConfig
from .training import apply_encoding, check_lengths, fit, load_pretrained, make_accelerator


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

    def forward(self, input_ids, labels, attention_mask=None):
        from transformers.modeling_outputs import MaskedLMOutput

        chosen = labels != -100
        if self.head is None:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits[chosen]
        else:
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits = self.head(hidden[chosen])
        loss = nn.functional.cross_entropy(logits.float(), labels[chosen])
        return MaskedLMOutput(loss=loss, logits=logits)


@torch.no_grad()
def evaluate_mlm(model, eval_sets: dict[int, list[dict]]) -> dict[str, dict]:
    """Masked-token loss and accuracy at each length (same masks for every encoding); `model` is a
    `MaskedPositionsMLM`."""
    model.eval()
    results = {}
    for length, batches in eval_sets.items():
        loss_sum, correct, count, started = 0.0, 0, 0, time.perf_counter()
        device = next(model.parameters()).device
        for batch in batches:
            labels = batch["labels"].to(device)
            chosen = labels != -100
            logits = model(input_ids=batch["input_ids"].to(device), labels=labels).logits  # masked positions only
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


def adapt_mlm(run: RunConfig, tokenizer, accelerator) -> tuple[dict[str, torch.Tensor], dict]:
    """Continue masked-LM training after the swap; return the adapted encoder's state and MLM results."""
    from accelerate.utils import set_seed

    set_seed(run.seed)
    model = MaskedPositionsMLM(build_mlm_model(run)).to(accelerator.device)
    loader, eval_sets = mlm_dataloaders(run, tokenizer)
    results = {"before": evaluate_mlm(model, eval_sets)} if eval_sets else {}
    overrides = {
        "learning_rate": run.mlm_learning_rate,
        "max_steps": run.mlm_steps,
        "checkpoint_every": None,
        "resume_from": None,
        "stop_after": None,
    }
    results["train"] = fit(
        accelerator, model, loader, run, Path(run.output_dir) / "mlm_checkpoints", "mlm", **overrides
    )
    unwrapped = accelerator.unwrap_model(model)
    if eval_sets:
        results["after"] = evaluate_mlm(unwrapped, eval_sets)
    state = {k: v.detach().clone() for k, v in unwrapped.base_model.state_dict().items()}
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
    check_lengths(AutoConfig.from_pretrained(checkpoint), run, [run.mlm_length, *run.mlm_eval_lengths])
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
