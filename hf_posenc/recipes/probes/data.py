"""Synthetic long-context retrieval sets: passkey and needle documents of exact token lengths.

Both follow LongEmbed (Zhu et al. 2024, "LongEmbed: Extending Embedding Models for Long Context Retrieval",
arXiv:2404.12096), which adapts personalized passkey retrieval (Mohtashami & Jaggi 2023, arXiv:2305.16300) and the
needle-in-a-haystack test to embedding models: every document hides one key sentence, every query asks for one key,
and the candidates of a query are all documents of its length. Only where the key sits, and how the model reads that
position, separates the candidates.

- **passkey**: the haystack is the same filler for every document ("The grass is green. The sky is blue. ..."), so
  two documents differ only in their key sentence "<name>'s pass key is <5 digits>. Remember it. <5 digits> is the
  pass key." and where it sits; the query is "What is <name>'s pass key?".
- **needle**: the haystack is real running text (Wikipedia articles by default, via `load_running_text`): one window
  of it per length, shared by all documents of that length as LongEmbed inserts its needles into the same essay
  (`varied_haystack=True` gives every document its own window, which adds topic noise); the key is "The special magic
  <city> number is <7 digits>." (the needle of Kamradt's LLM test) and the query "What is the special magic <city>
  number?".

Documents are token ids, not text: a document of length L has exactly L ids, special tokens included ([CLS] and
[SEP] for BERT), measured with the checkpoint's own tokenizer. Ids are never decoded and re-tokenized (that is not
always length-preserving), so the length and the key's position are exact. The key is inserted at the sentence
boundary of the haystack nearest to the requested depth (depth 0: first sentence, 1: after the last); the exact
token position and the realized depth are recorded with every document.

Generation is deterministic given the settings (a seeded `random.Random` per task and length) and cached on disk
under the hash of the settings, the tokenizer's vocabulary and the haystack source.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..data import load_running_text
from ..settings import Settings

TASKS = ("passkey", "needle")
"""The probe tasks."""

FORMAT_VERSION = 1
"""Bumped whenever generation changes, so that cached sets of an older generator are not reused."""

PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_KEY = "{name}'s pass key is {number}. Remember it. {number} is the pass key."
PASSKEY_QUERY = "What is {name}'s pass key?"
NEEDLE_KEY = "The special magic {name} number is {number}."
NEEDLE_QUERY = "What is the special magic {name} number?"

_NAMES = (
    "Aaron Abigail Adrian Alice Amelia Andrew Anna Arthur Beatrice Benjamin Bianca Caleb Camila Charles Chloe Daniel "
    "Diana Dominic Edgar Elena Emily Ethan Fiona Felix Gabriel Grace Hannah Harold Isaac Isabel Jacob Jasmine Julian "
    "Katherine Kevin Laura Leonard Lucas Margaret Martin Natalie Nathan Olivia Oscar Patrick Penelope Quentin Rachel "
    "Robert Sophia Samuel Teresa Thomas Ursula Victor Violet Walter Wendy Xavier Yvonne Zachary"
)
NAMES = tuple(_NAMES.split())
"""First names of the passkey owners (unique within a candidate pool)."""

_CITIES = (
    "Amsterdam Athens Bangkok Barcelona Beijing Berlin Bogota Boston Brussels Budapest Cairo Chicago Copenhagen "
    "Dallas Delhi Dublin Dubai Edinburgh Florence Geneva Hamburg Havana Helsinki Istanbul Jakarta Kyoto Lagos Lima "
    "Lisbon London Madrid Manila Melbourne Miami Milan Montreal Moscow Mumbai Munich Nairobi Naples Oslo Paris Prague "
    "Quebec Riga Rome Santiago Seattle Seoul Shanghai Singapore Stockholm Sydney Tokyo Toronto Valencia Venice Vienna "
    "Warsaw Zurich"
)
CITIES = tuple(_CITIES.split())
"""Cities of the needles (unique within a candidate pool)."""


@dataclass
class ProbeSettings(Settings):
    """What a generated probe set depends on (with the tokenizer and the haystack's content).

    Attributes:
        tasks: Probe tasks, from `TASKS`.
        lengths: Document lengths in tokens, special tokens included (LongEmbed: 256 to 32768).
        depths: Relative positions of the key in the haystack, 0 (start) to 1 (end).
        per_depth: Documents per (length, depth). The candidate pool of a length is all its documents:
            `len(depths) * per_depth`, so chance Acc@1 is one over that.
        long_per_depth: `per_depth` for lengths above `long_from` (caps the cost of the longest inputs).
        long_from: See `long_per_depth`.
        seed: Seed of the key values, names and haystack windows.
        haystack: Running text for the needle task, anything `load_running_text` takes ("wikipedia": about 100
            English Wikipedia articles shipped in a PyPI wheel; or a local .txt file, paragraphs separated by blank
            lines).
        varied_haystack: Give every needle document its own haystack window (default: one window per length).
    """

    config_kind: ClassVar[str] = "probe setting"

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    lengths: list[int] = field(default_factory=lambda: [128, 256, 512, 1024, 2048, 4096])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    per_depth: int = 8
    long_per_depth: int = 4
    long_from: int = 2048
    seed: int = 0
    haystack: str = "wikipedia"
    varied_haystack: bool = False

    def __post_init__(self) -> None:
        self.tasks, self.lengths, self.depths = list(self.tasks), [int(n) for n in self.lengths], list(self.depths)
        unknown = [task for task in self.tasks if task not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"Unknown probe task(s) {unknown or self.tasks}: choose from {', '.join(TASKS)}.")
        if not self.lengths or min(self.lengths) < 32:
            raise ValueError(f"Probe lengths must be at least 32 tokens (room for the key), got {self.lengths}.")
        if not self.depths or any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"Depths are relative positions between 0 and 1, got {self.depths}.")
        if len(set(self.lengths)) != len(self.lengths) or len(set(self.depths)) != len(self.depths):
            raise ValueError("Lengths and depths must not repeat.")
        if min(self.per_depth, self.long_per_depth) < 1:
            raise ValueError("per_depth and long_per_depth must be at least 1.")
        most = len(self.depths) * max(self.per_depth, self.long_per_depth)
        if most > min(len(NAMES), len(CITIES)):
            raise ValueError(
                f"{most} candidates per length, but keys are unique among {min(len(NAMES), len(CITIES))} names: "
                "lower per_depth or the number of depths."
            )

    def documents_per_depth(self, length: int) -> int:
        """Documents per depth at `length` (`long_per_depth` above `long_from`)."""
        return self.long_per_depth if length > self.long_from else self.per_depth


@dataclass
class ProbeDocument:
    """One candidate document and the query whose answer it holds.

    Attributes:
        input_ids: The document, exactly `length` ids, special tokens included.
        query_ids: The query, tokenized the same way.
        key: The key sentence; `key_start` / `key_length` locate its ids in `input_ids`.
        depth: The requested depth; `realized_depth` is where the key starts, as a fraction of the haystack.
    """

    input_ids: list[int]
    query_ids: list[int]
    key: str
    query: str
    depth: float
    realized_depth: float
    key_start: int
    key_length: int


@dataclass
class ProbeGroup:
    """All documents of one task and length: the candidate pool of each of their queries (chance = 1 / size)."""

    task: str
    length: int
    documents: list[ProbeDocument]


@dataclass
class ProbeSet:
    """A generated probe set: its settings, their hash (the cache key) and the groups."""

    settings: ProbeSettings
    fingerprint: str
    groups: list[ProbeGroup]

    def summary(self) -> dict[str, Any]:
        """What results record about the set: settings, hash, tokenizer, pool sizes and chance per length."""
        return {
            "settings": asdict(self.settings),
            "hash": self.fingerprint,
            "length_counts_special_tokens": True,
            "candidates": {f"{g.task}/{g.length}": len(g.documents) for g in self.groups},
            "chance": {f"{g.task}/{g.length}": 1 / len(g.documents) for g in self.groups},
        }


# ---------------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's class, vocabulary and special-token layout (what the ids depend on)."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps(list(tokenizer("hello")["input_ids"])).encode())
    digest.update(str(getattr(tokenizer, "do_lower_case", None)).encode())
    return digest.hexdigest()


def _haystack_texts(source: str) -> list[str]:

    if Path(source).is_file() and not Path(source).read_text(encoding="utf-8").strip():
        raise ValueError(f"The haystack {source!r} is empty: pass a haystack file with running text (--haystack).")
    texts = [t for t in load_running_text(source)["text"] if t.strip()]
    if not texts:
        raise ValueError(f"The haystack {source!r} has no text: pass a haystack with running text (--haystack).")
    return texts


def _source_fingerprint(source: str) -> str:
    # A local file is identified by its content; a named source ("wikipedia") is pinned by its package checksum.
    path = Path(source)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return source


def settings_hash(settings: ProbeSettings, tokenizer: Any) -> str:
    """The cache key of a probe set: settings, generator version, tokenizer and haystack content."""
    record = {
        "settings": asdict(settings),
        "format": FORMAT_VERSION,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "haystack": _source_fingerprint(settings.haystack) if "needle" in settings.tasks else None,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


class _Layout:
    """Where a tokenizer puts its special tokens around a single sequence (BERT: [CLS] x [SEP])."""

    def __init__(self, tokenizer: Any) -> None:
        # What the tokenizer adds around a plain word: transformers 5 tokenizers have no public "wrap these ids".
        plain = list(tokenizer("hello", add_special_tokens=False)["input_ids"])
        wrapped = list(tokenizer("hello")["input_ids"])
        index = next(i for i in range(len(wrapped) - len(plain) + 1) if wrapped[i : i + len(plain)] == plain)
        self.prefix, self.suffix = wrapped[:index], wrapped[index + len(plain) :]

    @property
    def specials(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def wrap(self, body: Sequence[int]) -> list[int]:
        return [*self.prefix, *body, *self.suffix]


def _encode(tokenizer: Any, text: str) -> list[int]:
    # verbose=False: a long haystack paragraph is more than model_max_length tokens, which is intended here
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _sentence_starts(ids: Sequence[int], stops: set[int]) -> list[int]:
    """Indices where a sentence starts (0, after each full stop, and the end)."""
    starts = [0] + [i + 1 for i, token in enumerate(ids) if token in stops and i + 1 < len(ids)]
    return sorted(set(starts) | {len(ids)})


def _insert(haystack: list[int], key: list[int], depth: float, stops: set[int]) -> tuple[list[int], int]:
    """Insert `key` at the sentence boundary of `haystack` nearest to `depth`; returns the ids and the key's start."""
    target = depth * len(haystack)
    start = min(_sentence_starts(haystack, stops), key=lambda s: (abs(s - target), s))
    return haystack[:start] + key + haystack[start:], start


def _stream(tokenizer: Any, texts: list[str]) -> list[int]:
    ids: list[int] = []
    for text in texts:
        for paragraph in text.split("\n"):
            if paragraph.strip():
                ids.extend(_encode(tokenizer, paragraph))
    return ids


def _window(stream: list[int], start: int, size: int) -> list[int]:
    # Wraps around a short haystack (a tiny test file); real haystacks are far longer than any document.
    repeats = -(-(start + size) // len(stream))
    return (stream * repeats)[start : start + size]


def generate_probe_set(tokenizer: Any, settings: ProbeSettings, haystack: list[str] | None = None) -> ProbeSet:
    """Generate the passkey and/or needle documents and queries for `settings` with `tokenizer`.

    Args:
        tokenizer: The checkpoint's tokenizer; lengths are counted in its ids, special tokens included.
        settings: Tasks, lengths, depths, documents per depth, seed and haystack source.
        haystack: Needle haystack texts; default `settings.haystack` loaded with `load_running_text`.

    Returns:
        The set: one group per (task, length), documents ordered by depth, document i answering query i.

    Raises:
        ValueError: an empty haystack, or a length with no room for the key.
    """
    layout = _Layout(tokenizer)
    stops = set(_encode(tokenizer, ".")[-1:])
    groups = []
    for task in settings.tasks:
        if task == "needle":
            texts = haystack if haystack is not None else _haystack_texts(settings.haystack)
            stream = _stream(tokenizer, texts)
            if not stream:
                raise ValueError("The needle haystack is empty: pass a haystack with running text (--haystack).")
            boundaries = _sentence_starts(stream, stops)[:-1]
        else:
            stream, boundaries = _encode(tokenizer, (PASSKEY_FILLER + " ") * 8), [0]
        for length in settings.lengths:
            rng = random.Random(f"{settings.seed}/{task}/{length}")
            count = settings.documents_per_depth(length) * len(settings.depths)
            names = rng.sample(NAMES if task == "passkey" else CITIES, count)
            shared_start = rng.choice(boundaries)
            documents = []
            for index, name in enumerate(names):
                depth = settings.depths[index // settings.documents_per_depth(length)]
                digits = 5 if task == "passkey" else 7
                number = str(rng.randrange(10 ** (digits - 1), 10**digits))
                key_template, query_template = (
                    (PASSKEY_KEY, PASSKEY_QUERY) if task == "passkey" else (NEEDLE_KEY, NEEDLE_QUERY)
                )
                key, query = key_template.format(name=name, number=number), query_template.format(name=name)
                key_ids = _encode(tokenizer, key)
                room = length - layout.specials - len(key_ids)
                if room < 0:
                    raise ValueError(
                        f"A {task} document of {length} tokens has no room for its key: raise the length."
                    )
                start = rng.choice(boundaries) if settings.varied_haystack else shared_start
                hay = _window(stream, start, room)
                body, key_start = _insert(hay, key_ids, depth, stops)
                documents.append(
                    ProbeDocument(
                        input_ids=layout.wrap(body),
                        query_ids=layout.wrap(_encode(tokenizer, query)),
                        key=key,
                        query=query,
                        depth=depth,
                        realized_depth=key_start / room if room else 0.0,
                        key_start=len(layout.prefix) + key_start,
                        key_length=len(key_ids),
                    )
                )
            groups.append(ProbeGroup(task, length, documents))
    return ProbeSet(settings, settings_hash(settings, tokenizer), groups)


def probe_cache_dir() -> Path:
    """Where generated sets are cached: `$HF_POSENC_CACHE/probes` (default `~/.cache/hf_posenc/probes`)."""
    root = os.environ.get("HF_POSENC_CACHE") or Path.home() / ".cache" / "hf_posenc"
    return Path(root).expanduser() / "probes"


def load_probe_set(tokenizer: Any, settings: ProbeSettings, *, cache: bool = True) -> ProbeSet:
    """The probe set for `settings` and `tokenizer`, from the cache when it was generated before.

    The cache file is `probe_cache_dir() / f"{hash}.json"`, `hash` from `settings_hash` (settings, generator version,
    tokenizer vocabulary, haystack content); it holds the ids, keys, queries and depths.
    """
    fingerprint = settings_hash(settings, tokenizer)
    path = probe_cache_dir() / f"{fingerprint}.json"
    if cache and path.is_file():
        stored = json.loads(path.read_text())
        groups = [ProbeGroup(g["task"], g["length"], [ProbeDocument(**d) for d in g["documents"]]) for g in stored]
        return ProbeSet(settings, fingerprint, groups)
    probe_set = generate_probe_set(tokenizer, settings)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps([asdict(g) for g in probe_set.groups]))
        partial.replace(path)  # atomic: a crash never leaves a truncated set behind
    return probe_set
