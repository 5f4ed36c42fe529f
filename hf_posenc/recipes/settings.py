"""The settings of every recipe: one dataclass base, which is also the command line and the JSON config schema.

`Settings` gives every settings dataclass the same dict and file round trip and refuses unknown keys with the valid
names. `TrainingSettings` holds the fields every training run shares (encoding, lengths, optimization, bookkeeping);
`RunConfig` (classification, optionally after masked-LM adaptation) and `Seq2SeqConfig` (a small BART) add their own.
`SweepConfig` runs many of them. Each field's `metadata["help"]` is its documentation: `hf_posenc.recipes.cli`
derives the command-line options from it with transformers' `HfArgumentParser`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..encodings import EXTENSION_INITS
from ..hub.files import read_json

__all__ = [
    "SWEEP_KINDS",
    "JsonDict",
    "RunConfig",
    "Seq2SeqConfig",
    "Settings",
    "SweepConfig",
    "TrainingSettings",
    "RESUME_MAY_DIFFER",
    "settings_differences",
    "slug",
]

S = TypeVar("S", bound="Settings")


class JsonDict(dict):
    """A dict that also accepts its JSON text, so that one annotation serves both JSON configs and command lines.

    `HfArgumentParser` passes a field's annotation to argparse as the option's `type`: `JsonDict('{"base": 500}')`
    parses the text, while a dict (from a config file) is taken as it is.
    """

    def __init__(self, value: Any = (), /, **kwargs: Any) -> None:
        if isinstance(value, str):
            value = json.loads(value)  # a JSONDecodeError is a ValueError, which argparse reports as a usage error
            if not isinstance(value, dict):
                raise ValueError(f"Expected a JSON object, got {type(value).__name__}.")
        super().__init__(value, **kwargs)


def _option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its help text (mutable defaults are wrapped in a factory)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class Settings:
    """The base of every settings dataclass: built from a dict or a JSON file, refusing unknown keys."""

    config_kind: ClassVar[str] = "config"
    """How error messages name this kind of settings ("Unknown config key(s) ...")."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [item.name for item in dataclasses.fields(cls)]

    @classmethod
    def field_defaults(cls) -> dict[str, Any]:
        """Each field's default, as saved in a results file (JSON values)."""
        defaults = {}
        for item in dataclasses.fields(cls):
            factory = item.default_factory
            default = factory() if factory is not dataclasses.MISSING else item.default
            defaults[item.name] = None if default is dataclasses.MISSING else json.loads(json.dumps(default))
        return defaults

    @classmethod
    def check_keys(cls, values: dict[str, Any]) -> None:
        """Raise a ValueError naming the unknown keys of `values` and listing the valid ones."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"Unknown {cls.config_kind} key(s) {unknown}. Valid keys: {sorted(cls.field_names())}.")

    @classmethod
    def from_dict(cls: type[S], values: dict[str, Any]) -> S:
        """Build the settings from a dict, refusing unknown keys with the list of valid ones."""
        cls.check_keys(values)
        return cls(**values)

    @classmethod
    def from_file(cls: type[S], path: str | Path) -> S:
        """Build the settings from a JSON file (see `from_dict`)."""
        values = read_json(path, f"Pass a JSON object of {cls.__name__} fields.")
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a JSON object of {cls.__name__} fields, not {type(values).__name__}.")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MIXED_PRECISIONS = ("no", "fp16", "bf16", "fp8")


def _field_default(cls: type, name: str) -> Any:
    item = next(f for f in dataclasses.fields(cls) if f.name == name)
    return None if item.default is dataclasses.MISSING else item.default


@dataclass
class TrainingSettings(Settings):
    """What every training run shares: encoding, lengths, optimization, seeds and bookkeeping."""

    # position encoding
    encoding: str = _option("learned", "the position encoding (a name or an alias of hf_posenc.ENCODINGS)")
    encoding_options: JsonDict = _option({}, 'the encoding\'s keyword options as a JSON object, e.g. {"base": 500}')
    label: str | None = _option(None, "the name of this variant in tables and plots; unset: derived from the encoding")
    # lengths
    train_length: int = _option(128, "training length in tokens (special tokens included)")
    eval_lengths: list[int] = _option([128, 256, 512, 1024, 2048], "evaluation lengths in tokens")
    # optimization
    epochs: int = _option(3, "training epochs (ignored when max_steps is set)")
    max_steps: int | None = _option(None, "optimizer steps in all (overrides epochs)")
    batch_size: int = _option(16, "training batch size per process")
    learning_rate: float = _option(5e-5, "peak learning rate (AdamW, linear warm-up and decay)")
    weight_decay: float = _option(0.01, "AdamW weight decay (biases and norms excepted)")
    warmup_ratio: float = _option(0.1, "fraction of the steps spent warming up the learning rate")
    gradient_accumulation_steps: int = _option(1, "micro-batches per optimizer step")
    max_grad_norm: float = _option(1.0, "gradient clipping norm (0: no clipping)")
    mixed_precision: str = _option("no", "Accelerate's mixed precision: no, fp16 or bf16")
    seed: int = _option(0, "seed of the model's initialization, dropout and the data order")
    data_seed: int = _option(0, "seed of the data split and subsampling (the same for every variant)")
    # position augmentation (hf_posenc.augmentation): short training windows whose position ids reach a target
    position_augmentation: str = _option(
        "none",
        "none, pose (PoSE, Zhu et al. 2023: chunks of the window shifted by random skips) or randomized (Ruoss et "
        "al. 2023: a sorted random subset of the target's positions); applies to every training phase of the run",
    )
    augmentation_target: int | None = _option(
        None,
        "the length augmented position ids reach (exclusive); unset: the largest evaluation length (seq2seq: the "
        "longest encoder input, its special tokens included)",
    )
    # bookkeeping
    output_dir: str = _option("recipes/results/run", "folder of results.json, results.md and the checkpoints")
    checkpoint_every: int | None = _option(None, "write a checkpoint every this many optimizer steps")
    resume_from: str | None = _option(None, 'a checkpoint folder to resume from, or "latest" under output_dir')
    stop_after: int | None = _option(None, "stop after this many steps, writing a checkpoint (simulates a kill)")
    report_to: str | None = _option(None, 'an Accelerate tracker, e.g. "tensorboard" or "wandb"')
    progress: bool = _option(True, "show progress bars")

    positive_ints: ClassVar[tuple[str, ...]] = (
        "train_length",
        "epochs",
        "max_steps",
        "batch_size",
        "gradient_accumulation_steps",
        "checkpoint_every",
        "stop_after",
    )
    """Fields that must be an int >= 1 (or None where the default is None)."""
    non_negative_ints: ClassVar[tuple[str, ...]] = ("seed", "data_seed")
    non_negative_floats: ClassVar[tuple[str, ...]] = ("weight_decay", "max_grad_norm")
    positive_floats: ClassVar[tuple[str, ...]] = ("learning_rate",)
    length_lists: ClassVar[tuple[str, ...]] = ("eval_lengths",)
    """Fields that must be a non-empty list of ints >= 1."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a TypeError or ValueError naming the first invalid field: a run that cannot train (`max_steps=-1`,
        `batch_size=0`, ...) is refused before anything is loaded, rather than reported as a result of 0 steps."""
        for name in self.positive_ints + self.non_negative_ints:
            value = getattr(self, name)
            if value is None and _field_default(type(self), name) is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}.")
            if value < (1 if name in self.positive_ints else 0):
                bound = "at least 1" if name in self.positive_ints else "at least 0"
                raise ValueError(f"{name} must be {bound}, got {value}.")
        for name in self.positive_floats + self.non_negative_floats:
            value = getattr(self, name)
            if value is None and _field_default(type(self), name) is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                raise TypeError(f"{name} must be a number, got {value!r}.")
            if value < 0 or (name in self.positive_floats and value == 0):
                bound = "positive" if name in self.positive_floats else "at least 0"
                raise ValueError(f"{name} must be {bound}, got {value}.")
        for name in self.length_lists:
            values = getattr(self, name)
            if not isinstance(values, list) or not values:
                raise ValueError(f"{name} must be a non-empty list of lengths, got {values!r}.")
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{name} must hold ints >= 1, got {values!r}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}.")

    @property
    def variant(self) -> str:
        """The label of this variant: given, or the encoding with its options."""
        if self.label:
            return self.label
        name = self.encoding + "".join(f" {k}={v}" for k, v in sorted(self.encoding_options.items()))
        if self.position_augmentation != "none":
            name += f" +{self.position_augmentation}@{self.augmentation_target or max(self.eval_lengths)}"
        return name


@dataclass
class RunConfig(TrainingSettings):
    """One classification run (optionally after masked-LM adaptation); JSON configs and command lines set the same
    fields."""

    # model
    model: str = _option("all-MiniLM-L6-v2", "checkpoint: a Hub id, a local folder or all-MiniLM-L6-v2 (offline)")
    keep_absolute: bool = _option(False, "keep the learned absolute table next to a relative encoding")
    max_length: int | None = _option(None, "grow the learned table to this many positions (extend_positions)")
    absolute_init: str = _option(
        "copy",
        "with keep_absolute and max_length: how extend_positions fills the kept table's new rows "
        "(copy, interpolate, sinusoidal or random)",
    )
    pooling: str = _option("cls", "cls: the checkpoint's classification head; mean: a mean-pooled linear head")
    head_learning_rate: float | None = _option(None, "learning rate of the new task head; unset: learning_rate")
    # data
    dataset: str = _option("pang_lee", "an offline dataset name, a local CSV/JSON/Parquet file or a Hub dataset id")
    text_column: str | None = _option(None, "the text column; unset: detected")
    label_column: str | None = _option(None, "the label column; unset: detected")
    test_size: float = _option(0.2, "test fraction when the dataset has no test split")
    max_train_examples: int | None = _option(None, "keep at most this many training examples")
    max_eval_examples: int | None = _option(None, "keep at most this many test examples")
    eval_tokens_per_batch: int = _option(8192, "evaluation batch size in tokens (batch = this // length)")
    train_windows: str = _option(
        "first",
        "first: train on each document's first train_length tokens; random: on a random window of train_length "
        "tokens, drawn again every epoch (seeded), so training sees the whole document",
    )
    windows_per_document: int = _option(
        1, "random windows per document and epoch (train_windows random); an epoch is this many times longer"
    )
    # what trains
    train_only: str = _option("all", "all: every parameter; positions: the position parameters and the task head only")
    lora_r: int = _option(
        0, "LoRA rank on the attention query and value projections (0: no LoRA; needs the peft extra)"
    )
    lora_alpha: int | None = _option(None, "LoRA scaling alpha; unset: 2 * lora_r")
    # evaluation of long documents in chunks (hf_posenc.recipes.chunked)
    eval_mode: str = _option(
        "single",
        "single: one pass over each document truncated at each length; chunked: the same tokens read in windows "
        "of chunk_window tokens, each with its own special tokens, pooled per document; both: report the two",
    )
    chunk_window: int | None = _option(
        None, "tokens per chunk, special tokens included, for eval_mode chunked/both; unset: train_length"
    )
    chunk_stride: int | None = _option(
        None, "document tokens between chunk starts; unset: the window's document tokens (disjoint chunks)"
    )
    chunk_pooling: str = _option(
        "embeddings",
        "embeddings: mean of the chunks' pooled embeddings weighted by their token counts, then the head "
        "(pooling=mean only); logits: mean of the chunks' logits",
    )
    # masked-LM adaptation before the task (0 steps: none)
    mlm_steps: int = _option(0, "masked-LM adaptation steps before the task (0: none)")
    mlm_dataset: str = _option("wikipedia", "running text for masked-LM adaptation")
    mlm_length: int = _option(128, "masked-LM training length in tokens")
    mlm_batch_size: int = _option(16, "masked-LM batch size")
    mlm_learning_rate: float = _option(1e-4, "masked-LM learning rate")
    mlm_probability: float = _option(0.15, "fraction of the tokens masked")
    mlm_head_warmup_steps: int = _option(
        0,
        "masked-LM steps that train only the MLM head's own parameters (encoder and tied word embeddings frozen) "
        "before the adaptation, so that a newly initialized head's first gradients do not scramble the encoder "
        "(0: none)",
    )
    mlm_head_learning_rate: float = _option(1e-3, "learning rate of the head warm-up (AdamW, constant)")
    mlm_eval_lengths: list[int] = _option([], "lengths at which masked-LM loss and accuracy are measured")
    mlm_max_eval_chunks: int = _option(32, "held-out chunks per masked-LM evaluation length")
    mlm_seed: int | None = _option(
        None, "seed of the masked-LM adaptation; unset: seed. Set it to share one (cached) adaptation across seeds"
    )
    mlm_cache: bool = _option(
        True,
        "cache the masked-LM-adapted encoder under the package cache ($HF_POSENC_CACHE/adapted) by a hash of every "
        "setting that affects it, and reuse it in later runs and seeds",
    )

    positive_ints = TrainingSettings.positive_ints + (
        "max_length",
        "max_train_examples",
        "max_eval_examples",
        "eval_tokens_per_batch",
        "mlm_length",
        "mlm_batch_size",
        "mlm_max_eval_chunks",
    )
    non_negative_ints = TrainingSettings.non_negative_ints + ("mlm_steps", "mlm_head_warmup_steps")
    positive_floats = TrainingSettings.positive_floats + (
        "head_learning_rate",
        "mlm_learning_rate",
        "mlm_head_learning_rate",
    )

    def validate(self) -> None:
        super().validate()
        if self.mlm_eval_lengths and any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in self.mlm_eval_lengths
        ):
            raise ValueError(f"mlm_eval_lengths must hold ints >= 1, got {self.mlm_eval_lengths!r}.")
        if self.absolute_init not in EXTENSION_INITS:
            raise ValueError(f"absolute_init must be one of {sorted(EXTENSION_INITS)}, got {self.absolute_init!r}.")
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability!r}.")
        if isinstance(self.test_size, bool) or not (
            (isinstance(self.test_size, float) and 0 < self.test_size < 1)
            or (isinstance(self.test_size, int) and self.test_size >= 1)
        ):
            raise ValueError(f"test_size must be a float in (0, 1) or an int >= 1, got {self.test_size!r}.")

    @property
    def variant(self) -> str:
        """The label of this variant: given, or the encoding with its options and MLM adaptation."""
        if self.label:
            return self.label
        name = self.encoding + (f"@{self.max_length}" if self.max_length else "")
        name += "".join(f" {k}={v}" for k, v in sorted(self.encoding_options.items()))
        name += (" +abs" if self.keep_absolute else "") + (f" +mlm{self.mlm_steps}" if self.mlm_steps else "")
        name += f" +head{self.mlm_head_warmup_steps}" if self.mlm_steps and self.mlm_head_warmup_steps else ""
        if self.position_augmentation != "none":
            name += f" +{self.position_augmentation}@{self.augmentation_target or max(self.eval_lengths)}"
        if self.train_windows != "first":
            name += f" +windows{self.windows_per_document if self.windows_per_document > 1 else ''}"
        name += (" positions-only" if self.train_only == "positions" else "") + (
            f" +lora{self.lora_r}" if self.lora_r else ""
        )
        return name + (" chunked" if self.eval_mode == "chunked" else "")


@dataclass
class Seq2SeqConfig(TrainingSettings):
    """One seq2seq run on a small BART; field names shared with `RunConfig` mean the same thing."""

    config_kind: ClassVar[str] = "seq2seq config"

    train_length: int = _option(32, "training source length in tokens (the encoder also reads the special tokens)")
    eval_lengths: list[int] = _option([16, 32, 64, 128], "evaluation source lengths in tokens (special tokens apart)")
    epochs: int = _option(1, "training epochs (ignored when max_steps is set)")
    learning_rate: float = _option(5e-4, "peak learning rate (AdamW, linear warm-up and decay)")
    output_dir: str = _option("recipes/results/seq2seq", "folder of results.json and the checkpoints")
    # task
    task: str = _option("reverse", "copy or reverse (offline), a Hub dataset id (e.g. xsum) or a local file")
    source_column: str = _option("document", "source column of a Hub or file task")
    target_column: str = _option("summary", "target column of a Hub or file task")
    text_dataset: str = _option("wikipedia", "running text the copy and reverse spans are cut from")
    max_target_length: int = _option(64, "target length of Hub or file tasks (copy/reverse: the input's)")
    train_examples: int = _option(2000, "training pairs")
    eval_examples: int = _option(64, "evaluation pairs per length")
    eval_batch_size: int = _option(16, "evaluation batch size")
    generate: bool = _option(True, "also measure greedy exact match")
    # model
    tokenizer: str = _option("all-MiniLM-L6-v2", "the tokenizer (and warm-start embeddings) checkpoint")
    warm_start: bool = _option(True, "copy the tokenizer checkpoint's word embeddings into the shared embeddings")
    d_model: int = _option(384, "model width")
    layers: int = _option(2, "encoder and decoder layers each")
    heads: int = _option(6, "attention heads")
    ffn_dim: int = _option(768, "feed-forward width")

    positive_ints = TrainingSettings.positive_ints + (
        "max_target_length",
        "train_examples",
        "eval_examples",
        "eval_batch_size",
        "d_model",
        "layers",
        "heads",
        "ffn_dim",
    )


SWEEP_KINDS = ("classification", "seq2seq")
RUN_SETTINGS: dict[str, type[TrainingSettings]] = {"classification": RunConfig, "seq2seq": Seq2SeqConfig}


@dataclass
class SweepConfig(Settings):
    """Several variants (encodings, options, MLM adaptation) x seeds on one dataset, split and budget."""

    config_kind: ClassVar[str] = "sweep"

    name: str = _option("sweep", "title of the results")
    description: str = _option("", "a paragraph under the title")
    kind: str = _option("classification", "classification (RunConfig fields) or seq2seq (Seq2SeqConfig fields)")
    output_dir: str = _option("recipes/results/sweep", "folder of results.json, results.md, results.png and runs/")
    base: JsonDict = _option({}, "run fields shared by every variant, as a JSON object")
    variants: list[JsonDict] = _option([], 'run fields per variant, JSON objects, e.g. {"encoding": "alibi"}')
    seeds: list[int] = _option([0], "seeds; every variant runs with each")
    baseline: bool = _option(True, "add the TF-IDF + logistic regression baseline (classification only)")
    metric: str = _option("accuracy", "the metric of the plot and the first table")
    resume: bool = _option(False, "reuse finished runs found under output_dir/runs (printed per run); unset: refuse")
    baseline_variant: str = _option("", "the row every variant is compared with (paired bootstrap); unset: the first")
    long_documents: int = _option(0, "also report test documents longer than this many tokens alone (0: no subset)")
    comparisons: list[JsonDict] = _option(
        [],
        'head-to-head rows besides the baseline\'s: JSON objects {"row": ..., "reference": ...}, each row minus '
        "its reference, paired over documents and seeds (rows: variant labels or TF-IDF rows)",
    )
    tfidf_windows: list[int] = _option(
        [],
        "also train TF-IDF + LR on this many random training-length windows of each training text, one row per "
        "count (the text a model fine-tuned on that many random windows reads)",
    )
    n_resamples: int = _option(10000, "bootstrap replicates of each interval and difference")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SweepConfig:
        sweep = super().from_dict(values)
        if sweep.kind not in SWEEP_KINDS:
            raise ValueError(f"Sweep kind must be one of {SWEEP_KINDS}, got {sweep.kind!r}.")
        if not sweep.variants:
            raise ValueError('A sweep needs at least one variant, e.g. {"encoding": "alibi"}.')
        if not sweep.seeds:
            raise ValueError("A sweep needs at least one seed.")
        if sweep.long_documents < 0 or sweep.n_resamples < 1:
            raise ValueError(
                f"long_documents must be >= 0 and n_resamples >= 1, got {sweep.long_documents}, {sweep.n_resamples}."
            )
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in sweep.tfidf_windows):
            raise ValueError(f"tfidf_windows holds window counts >= 1, got {sweep.tfidf_windows}.")
        for comparison in sweep.comparisons:
            _check_comparison(comparison)
        sweep.runs()  # validates every key of every run before anything runs
        return sweep

    def run_class(self) -> type[TrainingSettings]:
        return RUN_SETTINGS[self.kind]

    def runs(self) -> list[TrainingSettings]:
        """One run config per (seed, variant), each with its own output folder under `output_dir/runs`."""
        runs = []
        for seed in self.seeds:  # seed-major: an interrupted sweep has every variant for its first seeds
            for variant in self.variants:
                run = self.run_class().from_dict({**self.base, **variant, "seed": seed})
                run.output_dir = str(Path(self.output_dir) / "runs" / f"{slug(run.variant)}_seed{seed}")
                runs.append(run)
        return runs


COMPARISON_KEYS = ("row", "reference")


def _check_comparison(comparison: Any) -> None:
    """A head-to-head comparison is `{"row": name, "reference": name}`: two different row names."""
    if not isinstance(comparison, dict) or sorted(comparison) != sorted(COMPARISON_KEYS):
        raise ValueError(
            f"A comparison is a JSON object with exactly the keys {list(COMPARISON_KEYS)}, got {comparison!r}."
        )
    if not all(isinstance(comparison[key], str) and comparison[key] for key in COMPARISON_KEYS):
        raise TypeError(f"A comparison's row and reference are row names (non-empty strings), got {comparison!r}.")
    if comparison["row"] == comparison["reference"]:
        raise ValueError(f"A comparison needs two different rows, got {comparison['row']!r} twice.")


def slug(text: str) -> str:
    """A folder name for a variant label."""
    return re.sub(r"[^A-Za-z0-9.=@+-]+", "_", text).strip("_")


RESUME_MAY_DIFFER = frozenset(
    {
        "resume_from",  # the resumed run names the checkpoint; the interrupted one did not
        "stop_after",  # where the interrupted run stopped (or where the next part stops): not the run itself
        "checkpoint_every",  # saving reads the state without changing it, so the trajectory is the same
        "output_dir",  # a run folder may be moved or copied before it is resumed
        "progress",  # display only
        "report_to",  # where losses are logged, not what they are
    }
)
"""Settings a resumed run (or a sweep reusing a finished run) may change: bookkeeping that cannot change what is
trained or measured. Every other field must equal the saved one, or the result would describe a run that never
happened (e.g. an ALiBi-trained model resumed and labelled "rope")."""


def settings_differences(
    saved: dict[str, Any],
    requested: dict[str, Any],
    may_differ: frozenset[str] = RESUME_MAY_DIFFER,
    defaults: dict[str, Any] | None = None,
) -> list[str]:
    """The fields (outside `may_differ`) whose saved and requested values differ, as "name: saved -> requested".

    A field absent from `saved` but named in `defaults` was added after the run was saved: the run had the field's
    default behaviour (a new field's default keeps the old behaviour), so it is compared as that default.
    """
    missing = object()
    saved = {**(defaults or {}), **saved}
    differences = []
    for name in sorted((set(saved) | set(requested)) - may_differ):
        old, new = saved.get(name, missing), requested.get(name, missing)
        if old != new:
            shown = ["(absent)" if v is missing else repr(v) for v in (old, new)]
            differences.append(f"{name}: {shown[0]} -> {shown[1]}")
    return differences
