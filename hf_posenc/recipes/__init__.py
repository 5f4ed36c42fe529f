"""Recipes (the `[recipes]` extra): fine-tuning with Accelerate, results, sweeps. Built on the core and
`hf_posenc.hub`; nothing below imports this package.

    settings        the settings dataclasses (one base): the JSON configs and the command-line options
    data            datasets (Hub ids, local files, offline public data) and the default checkpoint
    training        the Accelerate loop shared by every recipe: patching, optimizer, checkpoints, exact resume
    classification  the classification run: data loaders, evaluation, `run_classification`
    mlm             masked-LM adaptation before the task
    seq2seq         the small-BART recipe
    results         environment record, results files, tables and the plot
    sweep           many variants x seeds, the TF-IDF baseline
    cli             `hf-posenc train / sweep / report` and the scripts' parsers
"""

from .classification import (
    MeanPoolingClassifier,
    build_classifier,
    classification_dataloaders,
    classification_scores,
    classification_splits,
    evaluate_classification,
    load_adapted_encoder,
    run_classification,
)
from .data import special_tokens
from .mlm import run_mlm_adaptation
from .results import aggregate, environment, git_revision, markdown_table, mean_std, plot, write_run_results
from .seq2seq import run_seq2seq
from .settings import RunConfig, Seq2SeqConfig, Settings, SweepConfig, TrainingSettings
from .sweep import render, run_sweep, tfidf_baseline
from .training import check_lengths, fit, make_accelerator, make_optimizer, supported_length, train_loop

__all__ = [
    "MeanPoolingClassifier",
    "RunConfig",
    "Seq2SeqConfig",
    "Settings",
    "SweepConfig",
    "TrainingSettings",
    "aggregate",
    "build_classifier",
    "check_lengths",
    "classification_dataloaders",
    "classification_scores",
    "classification_splits",
    "environment",
    "evaluate_classification",
    "fit",
    "git_revision",
    "load_adapted_encoder",
    "make_accelerator",
    "make_optimizer",
    "markdown_table",
    "mean_std",
    "plot",
    "render",
    "run_classification",
    "run_mlm_adaptation",
    "run_seq2seq",
    "run_sweep",
    "special_tokens",
    "supported_length",
    "tfidf_baseline",
    "train_loop",
    "write_run_results",
]
