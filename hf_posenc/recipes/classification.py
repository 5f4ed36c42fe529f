"""The classification recipe: fine-tune a patched model at one length, evaluate at many (optionally after MLM).

The Accelerate example shape: `classification_dataloaders` (the seam tests and scripts replace:
`run_classification(config, get_dataloaders=...)`) -> `fit` (`hf_posenc.recipes.training`) ->
`evaluate_classification` (predictions gathered with `gather_for_metrics`) -> `write_run_results`. Token ids are
computed once per document and truncated per evaluation length at batch time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..patching import patch_spec
from .data import base_model_name, dataset_info, load_text_classification, resolve_checkpoint, special_tokens
from .mlm import adapt_mlm
from .results import environment, git_revision, write_run_results
from .settings import RunConfig
from .training import apply_encoding, check_lengths, check_resume, fit, load_pretrained, make_accelerator

# ---------------------------------------------------------------------------------------------------------------------
# Model: the checkpoint's classification head, or a mean-pooled linear head
# ---------------------------------------------------------------------------------------------------------------------


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


def load_adapted_encoder(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an MLM-adapted encoder into a classifier's base model; only the pooler may be missing."""
    missing, unexpected = model.base_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("pooler.")]
    if missing or unexpected:
        raise ValueError(
            f"The adapted encoder does not fit the classifier: missing {missing}, unexpected {unexpected}."
        )


# ---------------------------------------------------------------------------------------------------------------------
# Data: token ids once, truncated per length at batch time
# ---------------------------------------------------------------------------------------------------------------------


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
# Evaluation and the run
# ---------------------------------------------------------------------------------------------------------------------


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

    git_revision()  # recorded as of the start: the code this process runs
    timings, started = {}, time.perf_counter()
    checkpoint = resolve_checkpoint(run.model)
    config = AutoConfig.from_pretrained(checkpoint)
    check_lengths(config, run, [run.train_length, *run.eval_lengths, *run.mlm_eval_lengths])
    check_resume(run, Path(run.output_dir) / "checkpoints")
    accelerator = make_accelerator(run)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    train_loader, loaders, facts = get_dataloaders(run, tokenizer)
    check_label_head(config, len(facts["class_names"]), facts["class_names"])
    timings["data_seconds"] = round(time.perf_counter() - started, 2)
    adapted, mlm_results = None, None
    if run.mlm_steps:
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
    # What a model card needs without importing the recipes: the base checkpoint's name and the data's provenance.
    results.update(base_model=base_model_name(run.model), dataset_info=dataset_info(run.dataset))
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
