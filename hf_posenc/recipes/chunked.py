"""Chunked evaluation: read a long document as windows of the training length and pool them per document.

A model fine-tuned at 128 tokens need not read 2048 tokens in one pass to use them: cut the same tokens into windows
the model was trained on, each with its own special tokens and positions starting at zero, run each window, and pool
per document, either the windows' pooled embeddings (weighted by their token counts, then the task head) or their
logits. This is the sliding-window baseline every long-context method should beat (Beltagy et al., 2020,
"Longformer", sec. 5; Ding et al., 2020, "CogLTX", sec. 1), and it costs about as much compute as the single pass.

`ChunkingCollator` cuts a batch of documents into chunks and records which document each chunk belongs to;
`chunked_document_logits` runs the chunks and pools them. Both read the same tokens as the single pass at that
length (the document truncated to `length` minus the special tokens), so the two modes compare on equal evidence.
"""

from __future__ import annotations

import torch
from torch import nn

from .data import special_tokens

__all__ = [
    "CHUNK_POOLINGS",
    "EVAL_MODES",
    "MODEL_INPUTS",
    "ChunkingCollator",
    "check_chunking",
    "chunk_starts",
    "chunked_document_logits",
    "eval_modes",
    "model_inputs",
]

EVAL_MODES = ("single", "chunked", "both")
"""`--eval_mode` choices: one pass per document, chunks pooled per document, or both reported side by side."""

CHUNK_POOLINGS = ("embeddings", "logits")
"""`--chunk_pooling` choices: the token-weighted mean of chunk embeddings then the head, or the mean of logits."""


def eval_modes(eval_mode: str) -> list[str]:
    """The modes `eval_mode` evaluates, single first."""
    if eval_mode not in EVAL_MODES:
        raise ValueError(f"eval_mode must be one of {EVAL_MODES}, got {eval_mode!r}.")
    return ["single", "chunked"] if eval_mode == "both" else [eval_mode]


def check_chunking(window: int, stride: int | None, pooling: str, specials: int, embeds: bool) -> None:
    """Refuse chunk settings that cannot work, naming the valid values.

    Args:
        window: tokens per chunk, special tokens included.
        stride: document tokens between chunk starts (None: disjoint chunks).
        pooling: one of `CHUNK_POOLINGS`.
        specials: the special tokens each chunk gets ([CLS] and [SEP]: 2).
        embeds: whether the classifier exposes `embed` and `head` (the mean-pooling head does), which
            `pooling="embeddings"` needs.
    """
    if pooling not in CHUNK_POOLINGS:
        raise ValueError(f"chunk_pooling must be one of {CHUNK_POOLINGS}, got {pooling!r}.")
    if window - specials < 1:
        raise ValueError(f"chunk_window must exceed the {specials} special tokens of each chunk, got {window}.")
    room = window - specials
    if stride is not None and not 1 <= stride <= room:
        raise ValueError(
            f"chunk_stride must be between 1 and the {room} document tokens of a {window}-token window "
            f"(larger strides would skip tokens), got {stride}."
        )
    if pooling == "embeddings" and not embeds:
        raise ValueError(
            "chunk_pooling='embeddings' needs a classifier whose pooled embedding and head are separate: use "
            "--pooling mean, or --chunk_pooling logits with the checkpoint's own head."
        )


def chunk_starts(n_tokens: int, room: int, stride: int) -> list[int]:
    """Start offsets of the chunks of `room` tokens every `stride` tokens until one reaches the end (at least one)."""
    starts = [0]
    while starts[-1] + room < n_tokens:
        starts.append(starts[-1] + stride)
    return starts


class ChunkingCollator:
    """Cut examples with token `ids` (no special tokens) into chunks of `window` tokens, each with its own specials.

    Each document is first truncated at `length` tokens as the single pass reads it (`length` minus the special
    tokens of one sequence), then cut every `stride` document tokens into chunks of `window` minus the special
    tokens. The batch holds the padded chunks (`input_ids`, `attention_mask`), `chunk_owner` (the document of each
    chunk, 0..documents-1), and per document `labels` and `index` when the examples have them.
    """

    def __init__(self, tokenizer, length: int, window: int, stride: int | None = None, label_key: str = "label"):
        self.prefix, self.suffix = special_tokens(tokenizer)
        specials = len(self.prefix) + len(self.suffix)
        self.document_room, self.room = length - specials, window - specials
        self.stride = stride or self.room
        self.pad, self.label_key = tokenizer.pad_token_id, label_key

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rows, owner = [], []
        for document, example in enumerate(examples):
            ids = list(example["ids"][: self.document_room])
            for start in chunk_starts(len(ids), self.room, self.stride):
                rows.append(self.prefix + ids[start : start + self.room] + self.suffix)
                owner.append(document)
        width = max(len(r) for r in rows)
        batch = {
            "input_ids": torch.tensor([r + [self.pad] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
            "chunk_owner": torch.tensor(owner),
        }
        if self.label_key in examples[0]:
            batch["labels"] = torch.tensor([e[self.label_key] for e in examples])
        if "index" in examples[0]:
            batch["index"] = torch.tensor([e["index"] for e in examples])
        return batch


MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")
"""What an evaluation batch hands the model (position ids when the run draws them at test time)."""


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's inputs of an evaluation batch: `MODEL_INPUTS` that it has (not labels, indices or owners)."""
    return {key: batch[key] for key in MODEL_INPUTS if key in batch}


def chunked_document_logits(
    model: nn.Module, batch: dict[str, torch.Tensor], pooling: str, embedder: nn.Module | None = None
) -> torch.Tensor:
    """Per-document logits (float32) of a `ChunkingCollator` batch.

    Args:
        model: the classifier (possibly wrapped by Accelerate) whose `logits` pool as `pooling="logits"`.
        batch: the chunks, with `chunk_owner`.
        pooling: "logits" (the mean of the chunks' logits) or "embeddings" (the chunks' pooled embeddings averaged
            with weights equal to their token counts, special tokens included, then the head: for mean pooling this
            is the mean over every token of every chunk).
        embedder: the unwrapped classifier with `embed(input_ids, attention_mask)` and `head(embedding)`, for
            `pooling="embeddings"`.
    """
    owner, mask = batch["chunk_owner"], batch["attention_mask"]
    documents = int(owner.max()) + 1
    if pooling == "logits":
        logits = model(**model_inputs(batch)).logits.float()
        sums = logits.new_zeros(documents, logits.shape[-1]).index_add_(0, owner, logits)
        counts = torch.bincount(owner, minlength=documents).to(sums.dtype)
        return sums / counts[:, None]
    embedding = embedder.embed(**model_inputs(batch)).float()
    weights = mask.sum(1).to(embedding.dtype)
    sums = embedding.new_zeros(documents, embedding.shape[-1]).index_add_(0, owner, embedding * weights[:, None])
    totals = weights.new_zeros(documents).index_add_(0, owner, weights)
    pooled = sums / totals[:, None]
    return embedder.head(pooled.to(next(embedder.parameters()).dtype)).float()
