"""Recipes (the `[recipes]` extra): fine-tuning with Accelerate, results, sweeps. Built on the core and
`hf_posenc.hub`; nothing below imports this package.

    settings        the settings dataclasses (one base): the JSON configs and the command-line options
    data            datasets (Hub ids, local files, offline public data) and the default checkpoint
    training        the Accelerate loop shared by every recipe: patching, optimizer, checkpoints, exact resume
    classification  the classification run: data loaders, evaluation, `run_classification`
    chunked         chunked evaluation: long documents read in training-length windows, pooled per document
    mlm             masked-LM adaptation before the task
    seq2seq         the small-BART recipe
    results         environment record, results files, tables and the plot
    sweep           many variants x seeds, the TF-IDF baseline
    cli             `hf-posenc train / sweep / report` and the scripts' parsers
"""

from .chunked import CHUNK_POOLINGS, EVAL_MODES, ChunkingCollator, chunked_document_logits
from .classification import (
    POOLINGS,
    DataloaderFactory,
    MeanPoolingClassifier,
    TruncatingCollator,
    build_classifier,
    check_label_head,
    classification_dataloaders,
    classification_scores,
    classification_splits,
    document_predictions,
    eval_loaders,
    evaluate_classification,
    evaluate_documents,
    load_adapted_encoder,
    run_classification,
    tokenize_texts,
)
from .data import special_tokens
from .mlm import run_mlm_adaptation
from .results import (
    NOT_METRICS,
    aggregate,
    environment,
    git_revision,
    markdown_table,
    mean_std,
    plot,
    run_markdown,
    write_json,
    write_run_results,
)
from .seq2seq import run_seq2seq
from .settings import SWEEP_KINDS, RunConfig, Seq2SeqConfig, Settings, SweepConfig, TrainingSettings, slug
from .sweep import render, run_sweep, sweep_markdown, tfidf_baseline
from .training import (
    LoopSettings,
    apply_encoding,
    check_lengths,
    fit,
    load_pretrained,
    make_accelerator,
    make_optimizer,
    steps_per_epoch,
    supported_length,
    train_loop,
)

__all__ = [
    "CHUNK_POOLINGS",
    "EVAL_MODES",
    "NOT_METRICS",
    "POOLINGS",
    "SWEEP_KINDS",
    "DataloaderFactory",
    "LoopSettings",
    "MeanPoolingClassifier",
    "RunConfig",
    "Seq2SeqConfig",
    "Settings",
    "SweepConfig",
    "TrainingSettings",
    "TruncatingCollator",
    "aggregate",
    "apply_encoding",
    "build_classifier",
    "ChunkingCollator",
    "check_label_head",
    "check_lengths",
    "classification_dataloaders",
    "classification_scores",
    "chunked_document_logits",
    "classification_splits",
    "document_predictions",
    "environment",
    "eval_loaders",
    "evaluate_classification",
    "evaluate_documents",
    "fit",
    "git_revision",
    "load_adapted_encoder",
    "load_pretrained",
    "make_accelerator",
    "make_optimizer",
    "markdown_table",
    "mean_std",
    "plot",
    "render",
    "run_classification",
    "run_markdown",
    "run_mlm_adaptation",
    "run_seq2seq",
    "run_sweep",
    "slug",
    "special_tokens",
    "steps_per_epoch",
    "supported_length",
    "sweep_markdown",
    "tfidf_baseline",
    "tokenize_texts",
    "train_loop",
    "write_json",
    "write_run_results",
]
