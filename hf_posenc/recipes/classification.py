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
from .chunked import ChunkingCollator, check_chunking, chunked_document_logits, eval_modes, model_inputs
from .data import base_model_name, dataset_info, load_text_classification, resolve_checkpoint, special_tokens
from .methods import (
    RandomWindows,
    augment_evaluation,
    augment_loader,
    check_methods,
    select_trainable,
    trainable_summary,
)
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

    def embed(self, input_ids, attention_mask, **encoder_inputs) -> torch.Tensor:
        """The attention-masked mean of the last hidden states (batch, hidden)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **encoder_inputs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        """Logits of pooled embeddings (chunked evaluation pools several chunks' embeddings before the head)."""
        return self.classifier(self.dropout(embedding))

    def forward(self, input_ids, attention_mask, labels=None, **encoder_inputs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits = self.head(self.embed(input_ids, attention_mask, **encoder_inputs))
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
    """Turn examples with token `ids` (no special tokens) into a padded batch truncated at `length` tokens; an
    example's `index` (its row in the test split) is passed on as the batch's `index`."""

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
        if "index" in examples[0]:
            batch["index"] = torch.tensor([e["index"] for e in examples])
        return batch


def tokenize_texts(split, tokenizer, max_tokens: int | None):
    """Add `ids` (token ids without special tokens, at most `max_tokens`; None: all) and `n_tokens` to a split."""

    def encode(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return {"ids": [i[:max_tokens] for i in ids], "n_tokens": [len(i) for i in ids]}

    return split.map(encode, batched=True, desc="tokenizing")


def eval_loaders(split, tokenizer, lengths: list[int], tokens_per_batch: int) -> dict[int, DataLoader]:
    """One loader per evaluation length; longest documents first, batches sized by a token budget. An `index`
    column (the document's row in the test split) is kept for per-document results."""
    ordered = split.sort("n_tokens", reverse=True)
    ordered = ordered.select_columns([c for c in ("ids", "label", "index") if c in ordered.column_names])
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
    test = test.add_column("index", list(range(len(test))))  # stable document ids: rows of the seeded test split
    random_windows = run.train_windows == "random"
    train = tokenize_texts(train, tokenizer, None if random_windows else run.train_length)
    test = tokenize_texts(test, tokenizer, max(run.eval_lengths))
    documents = train.select_columns(["ids", "label"])
    if random_windows:  # a fresh window of each whole document every epoch
        prefix, suffix = special_tokens(tokenizer)
        room = run.train_length - len(prefix) - len(suffix)
        documents = RandomWindows(documents, room, run.windows_per_document, run.seed)
    train_loader = DataLoader(
        documents, batch_size=run.batch_size, shuffle=True, collate_fn=TruncatingCollator(tokenizer, run.train_length)
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
    return evaluate_documents(accelerator, model, loaders, progress=progress)[0]


@torch.no_grad()
def evaluate_documents(
    accelerator,
    model,
    loaders: dict[int, DataLoader],
    chunk_pooling: str | None = None,
    progress: bool = True,
) -> tuple[dict, dict]:
    """Scores and per-document predictions at each length, gathered across processes with `gather_for_metrics`.

    Args:
        loaders: {length: prepared loader} of `TruncatingCollator` batches (`chunk_pooling=None`) or of
            `ChunkingCollator` batches.
        chunk_pooling: None for single-pass batches, else "embeddings" or "logits" (`chunked_document_logits`).

    Returns:
        ({length: accuracy, macro_f1, n, seconds, seq_per_s}, {length: {"index", "prediction", "label"}}), the
        per-document lists ordered by document index (batches without `index` are numbered in the order read).
    """
    from tqdm.auto import tqdm

    model.eval()
    embedder = accelerator.unwrap_model(model) if chunk_pooling == "embeddings" else None
    metrics, documents = {}, {}
    for length, loader in loaders.items():
        started, found = time.perf_counter(), {"index": [], "prediction": [], "label": []}
        label = f"eval@{length}" + (" chunked" if chunk_pooling else "")
        bar = tqdm(loader, desc=label, disable=not (progress and accelerator.is_local_main_process))
        for batch in bar:
            if chunk_pooling is None:
                logits = model(**model_inputs(batch)).logits
            else:
                with accelerator.autocast():
                    logits = chunked_document_logits(model, batch, chunk_pooling, embedder)
            labels = batch["labels"]
            index = batch.get("index", torch.full_like(labels, -1))
            for key, value in zip(found, accelerator.gather_for_metrics((index, logits.argmax(-1), labels))):
                found[key].append(value.cpu())
        index, prediction, labels = (torch.cat(found[k]) for k in ("index", "prediction", "label"))
        if (index < 0).any():
            index = torch.arange(len(labels))
        order = torch.argsort(index)
        documents[str(length)] = {k: v[order].tolist() for k, v in zip(found, (index, prediction, labels))}
        scores = classification_scores(prediction, labels)
        seconds = time.perf_counter() - started
        metrics[str(length)] = {**scores, "seconds": round(seconds, 2), "seq_per_s": round(scores["n"] / seconds, 2)}
    return metrics, documents


def document_predictions(per_mode: dict[str, dict]) -> dict:
    """The results' `predictions` entry: document indices and gold labels once, predicted labels per mode and length.

    `per_mode` is {mode: {length: {"index", "prediction", "label"}}} from `evaluate_documents`. Every mode and length
    read the same documents, so one `document_index` and one `labels` list serve all; `(predictions[mode][length],
    labels)` is what `hf_posenc.recipes.stats` bootstraps, and runs with the same `data_seed` pair by position.
    """
    first = next(iter(next(iter(per_mode.values())).values()))
    record = {"document_index": first["index"], "labels": first["label"]}
    for mode, per_length in per_mode.items():
        for length, found in per_length.items():
            if found["index"] != first["index"] or found["label"] != first["label"]:
                raise RuntimeError(f"Evaluation {mode}@{length} read other documents than the first evaluation.")
        record[mode] = {length: found["prediction"] for length, found in per_length.items()}
    return record


def chunked_loaders(loaders: dict[int, DataLoader], tokenizer, run: RunConfig) -> dict[int, DataLoader]:
    """Loaders over the same documents and batches as `loaders`, cutting each document into chunks."""
    window = run.chunk_window or run.train_length
    return {
        n: DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            collate_fn=ChunkingCollator(tokenizer, n, window, run.chunk_stride),
        )
        for n, loader in loaders.items()
    }


def check_evaluation(run: RunConfig, tokenizer) -> None:
    """Refuse evaluation settings that cannot work (eval_mode, chunk window, stride, pooling) before training."""
    if "chunked" in eval_modes(run.eval_mode):
        prefix, suffix = special_tokens(tokenizer)
        window = run.chunk_window or run.train_length
        check_chunking(window, run.chunk_stride, run.chunk_pooling, len(prefix) + len(suffix), run.pooling == "mean")


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
    check_lengths(config, run, [run.train_length, *single_lengths(run), *run.mlm_eval_lengths, *chunk_lengths(run)])
    check_resume(run, Path(run.output_dir) / "checkpoints")
    check_methods(config, run, [run.train_length] + ([run.mlm_length] if run.mlm_steps else []))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    check_evaluation(run, tokenizer)
    accelerator = make_accelerator(run)
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
    model = select_trainable(model, run)
    train_loader = augment_loader(train_loader, model, run)
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
    results.update(patch_spec=patch_spec(model), train={**train_summary, **trainable_summary(model)}, mlm=mlm_results)
    if not train_summary["stopped_early"]:
        results.update(evaluate_modes(accelerator, model, loaders, tokenizer, run))
    timings["total_seconds"] = round(time.perf_counter() - started, 2)
    results.update(timings=timings, environment=environment(accelerator))
    accelerator.end_training()
    if accelerator.is_main_process:
        write_run_results(results, Path(run.output_dir))
    if keep_model:
        results["model"] = accelerator.unwrap_model(model)
    return results


def single_lengths(run: RunConfig) -> list[int]:
    """The lengths the model reads in one pass: the evaluation lengths unless evaluation is chunked only (then a
    learned table need not cover them: each chunk starts again at position 0)."""
    return run.eval_lengths if "single" in eval_modes(run.eval_mode) else []


def chunk_lengths(run: RunConfig) -> list[int]:
    """The chunk window when chunked evaluation is asked for (checked against the model's limit like a length)."""
    return [run.chunk_window or run.train_length] if "chunked" in eval_modes(run.eval_mode) else []


def evaluate_modes(accelerator, model, loaders: dict[int, DataLoader], tokenizer, run: RunConfig) -> dict:
    """Evaluate in each of the run's modes; the results' `metrics` (the first mode's: single-pass when asked for),
    `metrics_by_mode` ({mode: {length: scores}}) and `predictions` (`document_predictions`)."""
    by_mode, documents = {}, {}
    for mode in eval_modes(run.eval_mode):
        mode_loaders = loaders if mode == "single" else chunked_loaders(loaders, tokenizer, run)
        mode_loaders = augment_evaluation(mode_loaders, accelerator.unwrap_model(model), run)
        prepared = accelerator.prepare(*mode_loaders.values())  # sharded per process; gather_for_metrics undoes it
        prepared = prepared if isinstance(prepared, tuple | list) else [prepared]
        pooling = None if mode == "single" else run.chunk_pooling
        by_mode[mode], documents[mode] = evaluate_documents(
            accelerator, model, dict(zip(mode_loaders, prepared)), pooling, run.progress
        )
    first = next(iter(by_mode.values()))
    return {"metrics": first, "metrics_by_mode": by_mode, "predictions": document_predictions(documents)}
