"""Publish patched models: the model card (`hf_posenc/templates/model_card.md` + recipe results) and `push_to_hub`.

`push_to_hub(model, repo_id, tokenizer=..., results=...)` writes the folder that `hf_posenc.from_pretrained` and
transformers' Auto classes load (model, tokenizer, `posenc_loader.py`, README.md card) and uploads it with
`huggingface_hub` (`create_repo(exist_ok=True)`, then `upload_folder`). `dry_run=True` lists the files instead.
"""

from __future__ import annotations

import json
import os
import string
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..architectures import architecture_for, get_submodule
from ..encodings import ENCODINGS, canonical_name
from ..patching import patch_spec
from ..record import PatchRecord, read_record
from ..version import __version__
from .assets import MINILM_NAMES
from .files import atomic_write
from .folders import copy_sentence_transformers_files, is_hub_id
from .format import POSENC_PREFIX, auto_targets
from .provenance import baseline_values, format_mean_std

# ---------------------------------------------------------------------------------------------------------------------
# Recipe results: the minimal schema the model card reads
# ---------------------------------------------------------------------------------------------------------------------

DATASET_INFO_KEY = "dataset_info"
"""The results.json entry that says how to cite the training data: `{"name": ..., "citation": ...}` or a list."""

TIMING_KEYS = {"n", "seconds", "seq_per_s", "examples", "steps"}
"""Per-length values that are bookkeeping, not metrics."""


@dataclass
class RecipeResults:
    """What a model card shows of a recipe's results, read tolerantly by `read_results`.

    Attributes:
        table: variant -> eval length -> metric -> values (one per seed), as `hf_posenc.reporting.aggregate` makes.
        baseline: name -> eval length -> metric -> value (e.g. the TF-IDF baseline of a sweep).
        settings: the runs' scalar settings (model, dataset, train_length, epochs, learning_rate, ...): the first
            run's as read; `results_for` keeps those its variants share, and marks the others as differing by row.
        variant_settings: variant -> its first run's scalar settings.
        recipe: what kind of run it was ("classification", "sweep", ...).
        seeds: the seeds of the runs read.
        specs: variant -> the `posenc` block of the model its runs trained, where the results record it.
        dataset_citations: dataset name -> how to cite it, from the results' `dataset_info` entries
            (`{"name": ..., "citation": ...}`, or a list of them, at the top level or in a run).
    """

    table: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    baseline: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    recipe: str | None = None
    seeds: list[Any] = field(default_factory=list)
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    dataset_citations: dict[str, str] = field(default_factory=dict)
    variant_settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def lengths(self) -> list[str]:
        found = {length for per_length in self.table.values() for length in per_length}
        return sorted(found, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))


RESULTS_SCHEMA = """a JSON object: {"metrics": {"<eval length>": {"<metric>": number, ...}, ...}} (a single run;
"results" is accepted for "metrics", and a list of {"length": L, "<metric>": number} too), optionally with
"config" (the run's settings: "model", "dataset", "train_length", ...), "variant" (a label) and "patch_spec" (the
model's posenc block, checked against the model); or a sweep: {"runs": [<run>, ...], "baseline": {...}}"""


def read_results(results: str | os.PathLike | dict | None) -> RecipeResults:
    """Read a recipe's results (`results.json` written by `hf-posenc train` / `sweep`, or a dict); see RESULTS_SCHEMA.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is not JSON, or an object with no per-length metrics.
    """
    if results is None:
        return RecipeResults()
    if isinstance(results, str | os.PathLike):
        path = Path(results)
        if not path.is_file():
            raise FileNotFoundError(f"No results file at {path}.")
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not JSON: {error}.") from None
    if not isinstance(results, dict):
        raise ValueError(f"Results must be {RESULTS_SCHEMA}; got {type(results).__name__}.")
    runs = results.get("runs") if isinstance(results.get("runs"), list) else [results]
    parsed = RecipeResults(recipe=results.get("kind") or results.get("recipe"), baseline=results.get("baseline") or {})
    _add_dataset_info(parsed, results.get(DATASET_INFO_KEY))
    for run in runs:
        _add_run(parsed, run)
    if not parsed.table:
        raise ValueError(f"No per-length metrics found. Results must be {RESULTS_SCHEMA}.")
    return parsed


def _add_dataset_info(parsed: RecipeResults, info: Any) -> None:
    """Collect `{"name": ..., "citation": ...}` entries (one or a list); anything else is ignored."""
    for entry in info if isinstance(info, list) else [info]:
        if isinstance(entry, dict) and isinstance(entry.get("citation"), str) and entry["citation"]:
            parsed.dataset_citations.setdefault(str(entry.get("name") or ""), entry["citation"])


def _add_run(parsed: RecipeResults, run: Any) -> None:
    if not isinstance(run, dict):
        return
    _add_dataset_info(parsed, run.get(DATASET_INFO_KEY))
    metrics = run.get("metrics", run.get("results"))
    if isinstance(metrics, list):
        metrics = {str(r.get("length", r.get("max_length"))): r for r in metrics if isinstance(r, dict)}
    if not isinstance(metrics, dict):
        return
    settings = run.get("config") if isinstance(run.get("config"), dict) else {}
    variant = str(run.get("variant") or settings.get("encoding") or "this model")
    for length, values in metrics.items():
        values = values if isinstance(values, dict) else {"score": values}
        slot = parsed.table.setdefault(variant, {}).setdefault(str(length), {})
        for name, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and name not in TIMING_KEYS:
                slot.setdefault(name, []).append(float(value))
    scalars = {k: v for k, v in settings.items() if isinstance(v, str | int | float)}
    parsed.settings = parsed.settings or scalars
    parsed.variant_settings.setdefault(variant, scalars)
    if "seed" in settings and settings["seed"] not in parsed.seeds:
        parsed.seeds.append(settings["seed"])
    spec = run.get("patch_spec", run.get("spec"))
    if isinstance(spec, dict):
        parsed.specs[variant] = spec


def results_for(model: nn.Module, results: RecipeResults) -> RecipeResults:
    """The variants of `results` that were trained with `model`'s patch (a sweep holds many encodings); results of
    another encoding are never published as this model's."""
    ours = (patch_spec(model) or {}).get("stacks") or {}
    keep = [v for v in results.table if v not in results.specs or _same_patch(results.specs[v], ours)]
    if results.table and not keep:
        found = {v: _encodings(s) for v, s in results.specs.items()}
        raise ValueError(f"The results are for encoding(s) {found}, but the model is patched with {_encodings(ours)}.")
    table = {v: results.table[v] for v in keep}
    rows = {v: results.variant_settings[v] for v in keep if v in results.variant_settings}
    settings = _shared_settings(list(rows.values())) if rows else results.settings
    return RecipeResults(
        table, results.baseline, settings, results.recipe, results.seeds, results.specs,
        results.dataset_citations, rows,
    )  # fmt: skip


DIFFERS_BY_ROW = "differs by row"


def _shared_settings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The settings every row shares; a setting the rows disagree on (or only some have) is `DIFFERS_BY_ROW`, so
    a card never shows one variant's recipe as another's (a sweep holds many fine-tunes of the same patch)."""
    keys = dict.fromkeys(k for row in rows for k in row)
    missing = object()
    return {
        k: rows[0].get(k) if all(row.get(k, missing) == rows[0].get(k, missing) for row in rows) else DIFFERS_BY_ROW
        for k in keys
    }


def _same_patch(spec: dict[str, Any], ours: dict[str, Any]) -> bool:
    stacks = spec.get("stacks") if isinstance(spec.get("stacks"), dict) else {}
    for name, entry in stacks.items():
        mine = ours.get(name) or {}
        options = entry.get("options") or {}
        if entry.get("encoding") != mine.get("encoding") or bool(entry.get("keep_absolute")) != bool(
            mine.get("keep_absolute")
        ):
            return False
        if any((mine.get("options") or {}).get(k) != v for k, v in options.items()):
            return False
    return True


def _encodings(spec: dict[str, Any] | None) -> dict[str, str]:
    stacks = (spec or {}).get("stacks", spec) or {}
    return {name: entry.get("encoding") for name, entry in stacks.items() if isinstance(entry, dict)}


# ---------------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------------

TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"
PIPELINE_TAGS = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "fill-mask",
    "ForMultipleChoice": "multiple-choice",
    "ForCausalLM": "text-generation",
    "Model": "feature-extraction",
}


def render_model_card(
    model: nn.Module,
    repo_id: str | None = None,
    results: str | os.PathLike | dict | RecipeResults | None = None,
    *,
    base_model: str | None = None,
    license: str | None = None,
    datasets: list[str] | None = None,
    template: str | os.PathLike = TEMPLATE,
) -> str:
    """The model card (README.md) of a patched model: YAML metadata, what was patched, how to load it, the recipe and
    its results table, limitations and citations, rendered from `template` (`hf_posenc/templates/model_card.md`).

    Args:
        model: a model patched by hf_posenc.
        repo_id: the Hub repo the card is for (used in the loading example).
        results: a recipe's results (see `read_results`).
        base_model: the Hub id of the checkpoint that was patched; default from the results or the model's config.
        license: the license id (e.g. "apache-2.0"), normally the base model's; omitted when unknown.
        datasets: the datasets it was trained on; default the results' dataset.
        template: a `string.Template` with the placeholders of `hf_posenc/templates/model_card.md`.
    """
    spec = read_record(model.config)
    if spec is None:
        raise ValueError("The model is not patched by hf_posenc; there is no position-encoding card to write.")
    parsed = results_for(model, results if isinstance(results, RecipeResults) else read_results(results))
    base_model = _hub_id(base_model or parsed.settings.get("model") or model.config._name_or_path)
    datasets = datasets or ([parsed.settings["dataset"]] if parsed.settings.get("dataset") else [])
    datasets = [name for name in datasets if _is_id(name)]  # local files are described by the recipe table
    fields = {
        "metadata": _metadata(model, spec, base_model, license, datasets),
        "title": repo_id.split("/")[-1] if repo_id else f"{type(model).__name__} with {_spec_words(spec)}",
        "summary": _summary(model, spec, base_model),
        "patch_table": _patch_table(model, spec),
        "step0": "\n".join(f"- {n}: {e.cls.step0}." for n, e in spec.stacks.items()),
        "load_snippet": _load_snippet(model, repo_id or "path/to/this/folder"),
        "model_type": POSENC_PREFIX + model.config.model_type,
        "recipe": _recipe_section(parsed),
        "results": _results_section(parsed),
        "limitations": _limitations(model, spec, parsed),
        "citations": _citations(spec, parsed),
        "version": __version__,
    }
    return string.Template(Path(template).read_text(encoding="utf-8")).substitute(fields)


def _hub_id(name: Any) -> str | None:
    """A Hub model id, or None for local paths and names that are not ids (all-MiniLM-L6-v2 gets its namespace)."""
    if not _is_id(name):
        return None
    return MINILM_NAMES[-1] if name in MINILM_NAMES else name


def _is_id(name: Any) -> bool:
    """Whether `name` is a Hub id (or an hf_posenc dataset name) rather than a local path."""
    return not (isinstance(name, str) and Path(name).exists()) and is_hub_id(name)


def _metadata(model, spec: PatchRecord, base_model, license, datasets) -> str:
    from huggingface_hub import ModelCardData

    encodings = sorted({entry.encoding for entry in spec.stacks.values()})
    suffix = next((s for s in PIPELINE_TAGS if type(model).__name__.endswith(s)), None)
    data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        license=license,
        datasets=datasets or None,
        pipeline_tag=PIPELINE_TAGS.get(suffix) if suffix else None,
        tags=[
            "hf_posenc",
            "position-encoding",
            model.config.model_type,
            *encodings,
            *(f"posenc-{e}" for e in encodings),
        ],
    )
    return data.to_yaml()


def _spec_words(spec: PatchRecord) -> str:
    return ", ".join(f"{entry.encoding} ({name})" for name, entry in spec.stacks.items())


def _summary(model, spec: PatchRecord, base_model) -> str:
    source = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "a pretrained checkpoint"
    return (
        f"This is {source} as a `{type(model).__name__}` whose position encoding was replaced with hf_posenc "
        f"{spec.version} (`pip install hf-posenc`): {_spec_words(spec)}."
    )


def _patch_table(model, spec: PatchRecord) -> str:
    lines = [
        "| stack | encoding | options | absolute table | learned position parameters | input limit |",
        "|---" * 6 + "|",
    ]
    for stack in architecture_for(model).stacks:
        entry = spec.stacks.get(stack.name)
        if entry is None:
            continue
        options = ", ".join(f"`{k}={v!r}`" for k, v in entry.options.items()) or "-"
        table = get_submodule(model.base_model, stack.table)
        kept = isinstance(table, nn.Embedding)
        absolute = "kept (hybrid)" if entry.keep_absolute else "kept" if kept else "replaced"
        count = _position_parameters(model, stack, kept)
        limit = entry.max_length or (stack.table_limit(table, model.config) if kept else "none")
        lines.append(f"| {stack.name} | `{entry.encoding}` | {options} | {absolute} | {count:,} | {limit} |")
    return "\n".join(lines)


def _position_parameters(model, stack, kept_table: bool) -> int:
    stack_module = model.base_model.get_submodule(stack.module)
    count = sum(p.numel() for n, p in stack_module.named_parameters() if "posenc." in n or n.startswith("posenc"))
    return count + (model.base_model.get_submodule(stack.table).weight.numel() if kept_table else 0)


def auto_class_name(model: nn.Module) -> str:
    """The transformers Auto class that loads `model`'s class (`AutoModel` for a base model)."""
    targets = auto_targets(model.config.model_type)
    names = [auto for auto, target in targets.items() if target == type(model).__name__]
    return "AutoModel" if "AutoModel" in names or not names else sorted(names, key=len)[0]


def _load_snippet(model, repo_id: str) -> str:
    auto = auto_class_name(model)
    return (
        f"import hf_posenc  # registers the {POSENC_PREFIX}{model.config.model_type} model type with transformers\n"
        f"from transformers import {auto}, AutoTokenizer\n\n"
        f'model = {auto}.from_pretrained("{repo_id}")  # or hf_posenc.from_pretrained("{repo_id}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")'
    )


RECIPE_SETTINGS = (
    "model",
    "dataset",
    "train_length",
    "max_length",
    "keep_absolute",
    "epochs",
    "max_steps",
    "batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "warmup_ratio",
    "mlm_steps",
    "mlm_dataset",
    "mlm_length",
    "pooling",
    "train_windows",
    "windows_per_document",
    "position_augmentation",
    "eval_mode",
    "chunk_window",
    "chunk_stride",
    "chunk_pooling",
)
"""The settings of a run that the card's recipe table shows (hf_posenc.training.RunConfig names them so)."""


def _shown(settings: dict[str, Any], key: str) -> bool:
    """Whether the recipe table shows `key`: set, and not a default of a mode the run did not use (chunk settings
    of a single-pass reading, windows per document without random windows)."""
    if settings.get(key) is None:
        return False
    if key.startswith("chunk_"):
        return settings.get("eval_mode") not in (None, "single")
    if key == "windows_per_document":
        return settings.get("train_windows") not in (None, "first")
    if key == "keep_absolute":  # only a relative encoding chooses whether the learned table stays
        return _encoding_kind(settings.get("encoding")) in (None, "relative")
    return True


def _encoding_kind(name: Any) -> str | None:
    """The registered kind ("absolute", "relative", "none") of an encoding name; None when it names none."""
    try:
        return ENCODINGS[canonical_name(name)].kind
    except (TypeError, ValueError):
        return None


def _recipe_section(parsed: RecipeResults) -> str:
    if not parsed.table:
        return "No recipe results were supplied with this model: it is published as patched (see above)."
    rows = [f"| {k} | {parsed.settings[k]} |" for k in RECIPE_SETTINGS if _shown(parsed.settings, k)]
    if parsed.seeds:
        rows.append(f"| seeds | {', '.join(str(s) for s in parsed.seeds)} |")
    kind = f"Recipe: `{parsed.recipe}`.\n\n" if parsed.recipe else ""
    return kind + "| setting | value |\n|---|---|\n" + "\n".join(rows) if rows else kind.strip()


def _results_section(parsed: RecipeResults) -> str:
    if not parsed.table:
        return "No evaluation results were supplied."
    lengths = parsed.lengths
    train = str(parsed.settings.get("train_length", ""))
    header = [f"{n} (train)" if n == train else n for n in lengths]
    metrics = sorted({m for per in parsed.table.values() for v in per.values() for m in v})
    blocks = []
    for metric in metrics:
        lines = [f"| {metric} | " + " | ".join(header) + " |", "|---" * (len(lengths) + 1) + "|"]
        for variant, per_length in parsed.table.items():
            lines.append(
                f"| {variant} | "
                + " | ".join(format_mean_std(per_length.get(n, {}).get(metric)) for n in lengths)
                + " |"
            )
        for name, per_length in parsed.baseline.items():
            cells = [per_length.get(n, {}) for n in lengths]
            values = [baseline_values(c, metric) if metric in c else None for c in cells]
            lines.append(f"| {name} | " + " | ".join(format_mean_std(v) for v in values) + " |")
        blocks.append("\n".join(lines))
    seeds = max(len(v) for per in parsed.table.values() for m in per.values() for v in m.values())
    note = (
        f"Columns are evaluation lengths in tokens; mean ± standard deviation over {seeds} seeds."
        if seeds > 1
        else ("Columns are evaluation lengths in tokens; one seed.")
    )
    return note + "\n\n" + "\n\n".join(blocks)


def _limitations(model, spec: PatchRecord, parsed: RecipeResults) -> str:
    items = [
        f"Loading needs hf_posenc (and transformers 5): without it transformers refuses the model type "
        f"`{POSENC_PREFIX}{model.config.model_type}`. Tools that key on `model_type` (inference servers, ONNX "
        "exporters, PEFT's default LoRA targets) do not recognize it either; with PEFT, name `target_modules`.",
    ]
    if any(e.cls.kind == "relative" for e in spec.stacks.values()):
        items.append(
            "Relative encodings run in the `posenc` attention backend (PyTorch SDPA plus a bias or rotation); "
            "`eager` and FlashAttention are not supported."
        )
    rows = parsed.variant_settings or {"": parsed.settings}
    chunked = [v for v, settings in rows.items() if settings.get("eval_mode") == "chunked"]
    if chunked:
        # The model is the same either way; only the reading differs, and a plain forward pass is what users run.
        settings = rows[chunked[0]]
        window = settings.get("chunk_window") or settings.get("train_length")
        pooling = settings.get("chunk_pooling") or "embeddings"
        which = "The results" if len(chunked) == len(rows) else f"The results of {', '.join(chunked)}"
        items.append(
            f"{which} read each document in {window}-token chunks, each with its own special tokens, pooled "
            f"per document ({pooling}; `hf_posenc.recipes.chunked`), not in one forward pass: a single pass over a "
            "long input is another reading and may score lower."
        )
    lengths = [int(n) for n in parsed.lengths if n.isdigit()]
    items.append(
        f"Evaluated at {min(lengths)}-{max(lengths)} tokens only; other lengths are untested."
        if lengths
        else "No evaluation was supplied: measure the model on your task before relying on it."
    )
    return "\n".join(f"- {item}" for item in items)


def _citations(spec: PatchRecord, parsed: RecipeResults) -> str:
    """The encodings' papers, then the training data's citations as the results give them (none without)."""
    items = [e.cls.citation for e in spec.stacks.values()]
    items += list(parsed.dataset_citations.values())
    unique = [c for i, c in enumerate(items) if c and c not in items[:i]]
    return "\n".join(f"- {c}" for c in unique)


# ---------------------------------------------------------------------------------------------------------------------
# Saving with a card, and pushing
# ---------------------------------------------------------------------------------------------------------------------


class PushError(RuntimeError):
    """The Hub could not be reached or refused the upload; the message says which repo and why."""


@dataclass
class PushResult:
    """What `push_to_hub` uploaded (or, with `dry_run`, would upload)."""

    repo_id: str
    files: list[tuple[str, int]]  # (path in the repo, size in bytes)
    commit_url: str | None = None  # None for a dry run


def save_for_hub(
    model: nn.Module,
    save_directory: str | os.PathLike,
    tokenizer: Any = None,
    results: str | os.PathLike | dict | None = None,
    sentence_transformers_folder: str | os.PathLike | None = None,
    **card_options: Any,
) -> Path:
    """Write the folder that `push_to_hub` uploads: the model (`save_pretrained`, with `posenc_loader.py`), the
    tokenizer (its `model_max_length` included), a README.md model card (`render_model_card(**card_options)`,
    written atomically) and, from `sentence_transformers_folder`, a sentence-transformers checkpoint's own files
    (modules.json, Pooling, Normalize, ...: without them sentence-transformers pools and normalizes otherwise)."""
    card = render_model_card(model, results=results, **card_options)  # first: bad input fails before writing
    folder = Path(save_directory)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if sentence_transformers_folder is not None:
        copy_sentence_transformers_files(sentence_transformers_folder, folder)
    atomic_write(folder / "README.md", card)
    return folder


def check_repo_id(repo_id: Any) -> str:
    """`repo_id` if huggingface_hub accepts it as a model repo id ("name" or "namespace/name"), else a ValueError."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str):
        raise TypeError(f"repo_id must be a string like 'username/bert-alibi', got {type(repo_id).__name__}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"Invalid Hub repo id {repo_id!r}: {error}") from None
    return repo_id


def _token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise ValueError(
            "No Hugging Face token: pass token=..., set the HF_TOKEN environment variable, or run `hf auth login`. "
            "(dry_run=True lists the files without one.)"
        )
    return token


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    tokenizer: Any = None,
    results: str | os.PathLike | dict | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    sentence_transformers_folder: str | os.PathLike | None = None,
    **card_options: Any,
) -> PushResult:
    """Save a patched model with its tokenizer and a generated model card, and upload them to the Hub.

    Args:
        model: a model patched by hf_posenc.
        repo_id: the model repo, "username/name" (created if needed).
        tokenizer: the model's tokenizer, saved beside it.
        results: a recipe's `results.json` (path or dict) for the card's recipe and results sections (`read_results`).
        private: create the repo as private.
        token: a Hub token; default the logged-in one (`HF_TOKEN`, `hf auth login`).
        commit_message: default "Upload <class> patched with <encodings> (hf_posenc <version>)".
        dry_run: print what would be uploaded (files and sizes) and upload nothing; no token needed, and nothing
            reaches the network.
        sentence_transformers_folder: the sentence-transformers folder the model was loaded from, whose own files
            (modules.json, Pooling, Normalize, ...) are uploaded with it.
        **card_options: `base_model`, `license`, `datasets`, `template` (see `render_model_card`).

    Returns:
        The files and, unless `dry_run`, the commit URL.

    Raises:
        ValueError: an unpatched model, a malformed repo id, no token, results of another encoding.
        PushError: the Hub could not be reached or refused the upload.
    """
    check_repo_id(repo_id)
    token = None if dry_run else _token(token)
    with tempfile.TemporaryDirectory(prefix="hf_posenc_push_") as folder:
        save_for_hub(model, folder, tokenizer, results, sentence_transformers_folder, repo_id=repo_id, **card_options)
        files = sorted(
            (p.relative_to(folder).as_posix(), p.stat().st_size) for p in Path(folder).rglob("*") if p.is_file()
        )
        if dry_run:
            print(_listing(repo_id, files, private))
            return PushResult(repo_id, files)
        words = _spec_words(read_record(model.config))
        message = commit_message or f"Upload {type(model).__name__} patched with {words} (hf_posenc {__version__})"
        print(f"Contacting the Hugging Face Hub: uploading {len(files)} files to {repo_id}.", file=sys.stderr)
        return PushResult(repo_id, files, _upload(folder, repo_id, private, token, message))


def _upload(folder: str, repo_id: str, private: bool, token: str, message: str) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError, OfflineModeIsEnabled

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message, repo_type="model")
    except (HTTPError, OfflineModeIsEnabled, OSError) as error:  # HfHubHTTPError is an HTTPError and an OSError
        raise PushError(f"Pushing to the Hub repo {repo_id!r} failed: {error}") from error
    return commit.commit_url


def _listing(repo_id: str, files: list[tuple[str, int]], private: bool) -> str:
    total = sum(size for _, size in files)
    width = max(len(name) for name, _ in files)
    lines = [
        f"Dry run: would upload {len(files)} files ({_size(total)}) to https://huggingface.co/{repo_id}"
        f"{' (private)' if private else ''}:"
    ]
    lines += [f"  {name:<{width}}  {_size(size):>9}" for name, size in files]
    return "\n".join(lines)


def _size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"
