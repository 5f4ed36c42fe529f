"""The seq2seq recipe: a small BART, patched, trained at one input length and evaluated at several.

No pretrained BART is reachable offline (no PyPI package ships one), so the model is a small `BartConfig` trained here,
its shared embeddings warm-started from all-MiniLM-L6-v2's word embeddings (same 384 width, same vocabulary) or
initialized at random. Every result records `"pretrained_bart": false`, and the tables say so.

Offline tasks are built from real running text (`hf_posenc.recipes.data.load_running_text`) and depend on position:
`copy` (output the input span) and `reverse` (output it backwards: output token i must find input token L-1-i).
A Hub dataset id (e.g. `xsum`, columns `document` / `summary`) or a local CSV/JSON/Parquet file with source and
target columns runs the same recipe as a generation task for users who can reach it.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..augmentation import TEST_TIME_METHODS
from ..encodings import ENCODINGS, canonical_name
from ..patching import patch_model, patch_spec
from .data import dataset_info, load_running_text, resolve_checkpoint, special_tokens
from .methods import EncoderPositions, augment_evaluation, augment_loader, check_methods
from .results import environment, write_json
from .settings import Seq2SeqConfig
from .training import check_resume, fit, make_accelerator

NOT_PRETRAINED = (
    "NOT pretrained BART: a small BART trained from scratch here (shared embeddings warm-started from "
    "all-MiniLM-L6-v2 word embeddings when warm_start is true); numbers say nothing about pretrained BART checkpoints."
)
OFFLINE_TASKS = ("copy", "reverse")


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def build_bart(run: Seq2SeqConfig, tokenizer) -> nn.Module:
    """A small `BartForConditionalGeneration` over the tokenizer's vocabulary, patched with `run.encoding`."""
    from transformers import BartConfig, BartForConditionalGeneration

    prefix, suffix = special_tokens(tokenizer)
    longest = table_rows(run)
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=run.d_model,
        encoder_layers=run.layers,
        decoder_layers=run.layers,
        encoder_attention_heads=run.heads,
        decoder_attention_heads=run.heads,
        encoder_ffn_dim=run.ffn_dim,
        decoder_ffn_dim=run.ffn_dim,
        max_position_embeddings=longest,  # learned rows past train_length stay untrained: that is the test
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=prefix[0],
        eos_token_id=suffix[-1],
        decoder_start_token_id=prefix[0],
        forced_eos_token_id=None,
    )
    model = BartForConditionalGeneration(config)
    if run.warm_start:
        _warm_start(model, run)
    return patch_model(model, run.encoding, **run.encoding_options)


def _warm_start(model: nn.Module, run: Seq2SeqConfig) -> None:
    from transformers import AutoModel

    source = AutoModel.from_pretrained(resolve_checkpoint(run.tokenizer)).get_input_embeddings().weight
    shared = model.get_input_embeddings().weight
    if source.shape != shared.shape:
        raise ValueError(
            f"warm_start copies {run.tokenizer}'s word embeddings {tuple(source.shape)} into the shared embeddings "
            f"{tuple(shared.shape)}: set d_model={source.shape[1]} or warm_start=false."
        )
    with torch.no_grad():
        shared.copy_(source)


# ---------------------------------------------------------------------------------------------------------------------
# Data: position-dependent tasks from running text, or source/target pairs from the Hub or a file
# ---------------------------------------------------------------------------------------------------------------------


def span_pairs(token_stream: list[int], task: str, length: int, count: int, seed: int) -> list[tuple[list, list]]:
    """`count` random spans of `length` tokens; the target is the span (copy) or the span reversed (reverse)."""
    if len(token_stream) <= length:
        raise ValueError(f"The running text has {len(token_stream)} tokens, too few for spans of {length}.")
    rng = random.Random(seed)
    starts = [rng.randrange(len(token_stream) - length) for _ in range(count)]
    spans = [token_stream[s : s + length] for s in starts]
    return [(span, span if task == "copy" else span[::-1]) for span in spans]


def running_text_streams(run: Seq2SeqConfig, tokenizer) -> tuple[list[int], list[int]]:
    """Token streams of the training and held-out documents (held out: every tenth document)."""
    texts = list(load_running_text(run.text_dataset)["text"])
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    train = [t for i, doc in enumerate(ids) if i % 10 for t in doc]
    held_out = [t for i, doc in enumerate(ids) if not i % 10 for t in doc]
    return train, held_out


def file_or_hub_pairs(run: Seq2SeqConfig, tokenizer) -> tuple[list[tuple], list[tuple]]:
    """(source ids, target ids) pairs of a Hub dataset id or a local CSV/JSON/Parquet file."""
    from datasets import load_dataset

    path = Path(run.task)
    if path.is_file():
        data = load_dataset(
            path.suffix.lstrip(".").replace("jsonl", "json").replace("tsv", "csv"), data_files=str(path)
        )
    else:
        data = load_dataset(run.task)  # needs the Hub (e.g. "xsum")
    splits = list(data)
    columns = data[splits[0]].column_names
    for column in (run.source_column, run.target_column):
        if column not in columns:
            raise ValueError(f"{run.task!r} has no column {column!r}; its columns are {columns}.")
    data = data if len(splits) > 1 else data[splits[0]].train_test_split(test_size=0.2, seed=run.data_seed)

    def pairs(split, count):
        split = split.select(range(min(count, len(split))))
        sources = tokenizer(list(split[run.source_column]), add_special_tokens=False)["input_ids"]
        targets = tokenizer(list(split[run.target_column]), add_special_tokens=False)["input_ids"]
        return [(s, t[: run.max_target_length]) for s, t in zip(sources, targets)]

    test = next(s for s in ("test", "validation") if s in data)
    return pairs(data["train"], run.train_examples), pairs(data[test], run.eval_examples)


class PairCollator:
    """Source truncated at `length` tokens (with the tokenizer's special tokens); labels end with eos."""

    def __init__(self, tokenizer, length: int) -> None:
        self.prefix, self.suffix = special_tokens(tokenizer)
        self.room, self.pad = length, tokenizer.pad_token_id

    def __call__(self, pairs: list[tuple[list, list]]) -> dict[str, torch.Tensor]:
        sources = [self.prefix + list(s[: self.room]) + self.suffix for s, _ in pairs]
        targets = [list(t) + self.suffix[-1:] for _, t in pairs]
        input_ids, mask = _pad(sources, self.pad)
        labels, _ = _pad(targets, -100)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    padded = torch.tensor([r + [value] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return padded, mask


def seq2seq_dataloaders(run: Seq2SeqConfig, tokenizer) -> tuple[DataLoader, dict[int, DataLoader]]:
    """Training pairs at `train_length` and evaluation pairs at each length (copy/reverse: spans of that length)."""
    if run.task in OFFLINE_TASKS:
        train_stream, eval_stream = running_text_streams(run, tokenizer)
        train = span_pairs(train_stream, run.task, run.train_length, run.train_examples, run.data_seed)
        tests = {
            n: span_pairs(eval_stream, run.task, n, run.eval_examples, run.data_seed + n) for n in run.eval_lengths
        }
    else:
        train, test = file_or_hub_pairs(run, tokenizer)
        tests = {n: test for n in run.eval_lengths}
    loader = DataLoader(
        train, batch_size=run.batch_size, shuffle=True, collate_fn=PairCollator(tokenizer, run.train_length)
    )
    evals = {
        n: DataLoader(pairs, batch_size=run.eval_batch_size, collate_fn=PairCollator(tokenizer, n))
        for n, pairs in tests.items()
    }
    return loader, evals


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation and the run
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_seq2seq(accelerator, model, loaders: dict[int, DataLoader], generate: bool) -> dict[str, dict]:
    """Teacher-forced loss and token accuracy at each input length; greedy exact match when `generate`."""
    model.eval()
    unwrapped = accelerator.unwrap_model(model)
    results = {}
    for length, loader in loaders.items():
        started, sums = time.perf_counter(), {"loss": 0.0, "correct": 0, "tokens": 0, "exact": 0, "sequences": 0}
        for batch in loader:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            output = model(**batch)
            chosen = batch["labels"] != -100
            sums["loss"] += output.loss.item() * chosen.sum().item()
            sums["correct"] += (output.logits.argmax(-1)[chosen] == batch["labels"][chosen]).sum().item()
            sums["tokens"] += chosen.sum().item()
            if generate:
                sums["exact"] += _exact_matches(unwrapped, batch)
            sums["sequences"] += len(batch["labels"])
        results[str(length)] = {
            "loss": round(sums["loss"] / sums["tokens"], 5),
            "token_accuracy": round(sums["correct"] / sums["tokens"], 5),
            **({"exact_match": round(sums["exact"] / sums["sequences"], 5)} if generate else {}),
            "n": sums["sequences"],
            "seconds": round(time.perf_counter() - started, 2),
        }
    return results


def _exact_matches(model, batch: dict[str, torch.Tensor]) -> int:
    labels = batch["labels"]
    positions = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
    generated = model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        **positions,
        max_new_tokens=labels.shape[1],
        num_beams=1,
        do_sample=False,
    )[:, 1:]  # drop the decoder start token
    matches = 0
    for row, target in zip(generated, labels):
        target = target[target != -100]
        matches += int(len(row) >= len(target) and torch.equal(row[: len(target)], target))
    return matches


def encoder_augmentation(run: Seq2SeqConfig, tokenizer) -> Seq2SeqConfig:
    """The settings the encoder's augmented ids are drawn with: the run's, with a target that covers the encoder's
    longest input, special tokens included (a length here counts the source's tokens; the encoder reads them between
    the tokenizer's special tokens). The recorded settings keep the user's value (unset stays unset), so a finished
    run is recognized and resumed.

    An unset target becomes that longest evaluation input, so the trained ids reach every position the evaluation
    uses. Refused before anything trains: a target below it for randomized positions (drawn at test time too, from
    `[0, target)`, they could not place the input), and a target past a learned table's rows.
    """
    if run.position_augmentation == "none":
        return run
    prefix, suffix = special_tokens(tokenizer)
    longest = max(run.eval_lengths) + len(prefix) + len(suffix)
    target = run.augmentation_target or longest
    if run.position_augmentation in TEST_TIME_METHODS and target < longest:
        raise ValueError(
            f"augmentation_target ({target}) is below the longest encoder input ({longest}: "
            f"{max(run.eval_lengths)} tokens and {len(prefix) + len(suffix)} special tokens); randomized positions "
            f"are drawn at test time too, from [0, augmentation_target). Set --augmentation_target to at least "
            f"{longest}, or leave it unset."
        )
    encoding = ENCODINGS[canonical_name(run.encoding)]
    if encoding.kind == "absolute" and encoding.learned and target > table_rows(run):
        raise ValueError(
            f"augmentation_target ({target}) is past the encoder's {table_rows(run)} positions (the longest input "
            f"of the run); lower --augmentation_target or add a longer evaluation length."
        )
    return dataclasses.replace(run, augmentation_target=target)


def table_rows(run: Seq2SeqConfig) -> int:
    """Positions of the small BART's tables: the run's longest source or target, and two special tokens."""
    return max(run.eval_lengths + [run.train_length, run.max_target_length]) + 2


def run_seq2seq(run: Seq2SeqConfig, get_dataloaders=seq2seq_dataloaders) -> dict:
    """Train a small patched BART on the task at `train_length`, evaluate at `eval_lengths`; write results."""
    from accelerate.utils import set_seed
    from transformers import AutoTokenizer

    started = time.perf_counter()
    if run.task not in OFFLINE_TASKS and run.task.startswith(("copy", "reverse")):
        raise ValueError(f"Unknown offline task {run.task!r}; offline tasks are {OFFLINE_TASKS}.")
    check_resume(run, Path(run.output_dir) / "checkpoints")
    check_methods(None, run, [run.train_length])
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(run.tokenizer))
    positions = encoder_augmentation(run, tokenizer)
    accelerator = make_accelerator(run)
    train_loader, loaders = get_dataloaders(run, tokenizer)
    set_seed(run.seed)
    model = build_bart(run, tokenizer)
    train_loader = augment_loader(train_loader, model, positions)
    trained = model if run.position_augmentation == "none" else EncoderPositions(model)
    summary = fit(accelerator, trained, train_loader, run, Path(run.output_dir) / "checkpoints", "seq2seq")
    results = {"kind": "seq2seq", "pretrained_bart": False, "note": NOT_PRETRAINED, "variant": run.variant}
    source = run.text_dataset if run.task in OFFLINE_TASKS else run.task
    results["dataset_info"] = dataset_info(source)  # the model card's data section, as classification runs give it
    results.update(config=run.to_dict(), patch_spec=patch_spec(accelerator.unwrap_model(model)), train=summary)
    if run.position_augmentation != "none":
        results["encoder_augmentation_target"] = positions.augmentation_target
    if not summary["stopped_early"]:  # randomized positions are drawn for the encoder at test time too
        loaders = augment_evaluation(loaders, model, positions)
        results["metrics"] = evaluate_seq2seq(accelerator, trained, loaders, run.generate)
    results.update(
        timings={"total_seconds": round(time.perf_counter() - started, 2)}, environment=environment(accelerator)
    )
    if accelerator.is_main_process:
        write_json(results, Path(run.output_dir) / "results.json")
    return results
