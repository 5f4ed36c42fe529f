"""Methods, embeddings and scoring for the retrieval probes.

A `ProbeMethod` says how a checkpoint is made to read long inputs without training: nothing (stock), a grown learned
table (`extend_positions` inits), positions mapped into the trained table (`position_ids="recurrent" | "grouped"`),
a cold swap to another encoding (with `max_length` so that long inputs run), and/or chunked encoding. `build_model`
applies it with the public API only (`extend_positions`, `patch_model`).

Scoring is Acc@1 over the candidate pool of a length (LongEmbed reports nDCG@1, the same number with one relevant
document per query). **Ties share the credit**: a query whose own document ties with k other candidates for the
highest similarity scores 1 / (k + 1), its expected Acc@1 when ties are broken at random; so a constant embedding
scores exactly chance (1 / candidates), never more, and the number of tied queries is reported with each score.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..data import resolve_checkpoint
from ..settings import Settings
from .data import ProbeSet, _Layout

POOLINGS = ("mean", "cls")
POSITION_MAPS = ("recurrent", "grouped")
INITS = ("copy", "interpolate", "sinusoidal", "random")

Embedder = Callable[[list[list[int]]], torch.Tensor]
"""Token-id sequences (special tokens included) -> one embedding per sequence, shape (n, dim)."""

# RoBERTa-style tables keep `padding_idx + 1` rows before the first position.
_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert")


@dataclass
class ProbeMethod(Settings):
    """How the checkpoint reads long inputs (all training-free).

    Attributes:
        name: Label in tables and plots (and the results file name).
        encoding: None keeps the checkpoint's own encoding; "learned" with `init` or `position_ids` extends it;
            any other name (see `hf_posenc.ENCODINGS`) is a cold swap with `patch_model`.
        options: The encoding's options, passed to `patch_model` (e.g. RoPE `{"scaling": "ntk", "factor": 8}`).
        max_length: The new input limit (`patch_model` / `extend_positions` `max_length`).
        init: Grow the learned table to `max_length` with `extend_positions(init=...)`, one of `INITS`.
        position_ids: Map positions into the trained table instead (`"recurrent"`: p mod T, `"grouped"`: p // g).
        group_size: The group size of `position_ids="grouped"` (default ceil(max_length / T)).
        keep_absolute: Keep the learned table beside a relative encoding (`patch_model(keep_absolute=True)`).
        attention_scale: Passed to `patch_model` as `attention_scale=` when set (e.g. "log").
        chunked: Embed windows of `chunk_length` tokens and average them, weighted by their token counts.
        chunk_length: The window, special tokens included; default the checkpoint's trained length.
        lengths: Probe lengths for this method (a subset of the set's); default all that the model accepts.
        dynamic: Scale each input by its own length, as LongEmbed does for grouped positions and interpolation: an
            input of L tokens runs on the checkpoint extended to s * T positions, s = ceil(L / T) (T: the trained
            length; group size or stretch s), so inputs up to T, queries included, run on the stock model.
            `max_length` is then the longest input. For `init` / `position_ids` extensions only.
    """

    config_kind: ClassVar[str] = "probe method"

    name: str = "stock"
    encoding: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    max_length: int | None = None
    init: str | None = None
    position_ids: str | None = None
    group_size: int | None = None
    keep_absolute: bool = False
    attention_scale: str | None = None
    chunked: bool = False
    chunk_length: int | None = None
    lengths: list[int] | None = None
    dynamic: bool = False

    def __post_init__(self) -> None:
        if self.init is not None and self.init not in INITS:
            raise ValueError(f"Unknown init {self.init!r}: choose from {', '.join(INITS)}.")
        if self.position_ids is not None and self.position_ids not in POSITION_MAPS:
            raise ValueError(f"Unknown position_ids {self.position_ids!r}: choose from {', '.join(POSITION_MAPS)}.")
        if self.init and self.position_ids:
            raise ValueError("Pass either init (new rows) or position_ids (mapped positions), not both.")
        if (self.init or self.position_ids) and self.encoding not in (None, "learned"):
            raise ValueError(f"init / position_ids extend the learned table; they do not apply to {self.encoding!r}.")
        if (self.init or self.position_ids) and not self.max_length:
            raise ValueError("init / position_ids need the new limit: pass max_length (--max_length N).")
        if self.group_size is not None and self.position_ids != "grouped":
            raise ValueError("group_size applies to position_ids='grouped' only.")
        if self.chunk_length is not None and not self.chunked:
            raise ValueError("chunk_length applies to chunked encoding only (--chunked).")
        if self.dynamic and not (self.init or self.position_ids) or self.dynamic and self.chunked:
            raise ValueError("dynamic scales a learned-table extension per input: pass --init or --position_ids.")


def preset_methods(max_length: int = 4096, attention_scale: str = "log") -> dict[str, ProbeMethod]:
    """Every training-free method the project has, by name (the study's rows).

    `max_length` is the new limit of every extension and swap; the `+scale` variants add `attention_scale`.
    """
    n = max_length
    methods = [
        ProbeMethod("stock"),
        ProbeMethod("chunked", chunked=True),
        *(ProbeMethod(f"extend-{init}", init=init, max_length=n) for init in INITS),
        *(ProbeMethod(mode, encoding="learned", position_ids=mode, max_length=n) for mode in POSITION_MAPS),
        *(
            ProbeMethod(f"swap-{name}", encoding=name, max_length=n)
            for name in ("sinusoidal", "relative_key", "relative_key_query", "t5", "alibi", "rope", "nezha")
        ),
        ProbeMethod("extend-interpolate-dynamic", init="interpolate", max_length=n, dynamic=True),
        ProbeMethod("grouped-dynamic", encoding="learned", position_ids="grouped", max_length=n, dynamic=True),
        ProbeMethod("extend-interpolate+scale", init="interpolate", max_length=n, attention_scale=attention_scale),
        ProbeMethod(
            "grouped+scale", encoding="learned", position_ids="grouped", max_length=n, attention_scale=attention_scale
        ),
        ProbeMethod("swap-alibi+scale", encoding="alibi", max_length=n, attention_scale=attention_scale),
        ProbeMethod("swap-rope+scale", encoding="rope", max_length=n, attention_scale=attention_scale),
    ]
    return {method.name: method for method in methods}


# ---------------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------------


def input_limit(model: torch.nn.Module) -> int:
    """The longest input (tokens, special tokens included) that `model` accepts now."""
    from hf_posenc import patch_spec

    stack = ((patch_spec(model) or {}).get("stacks") or {}).get("encoder") or {}
    if stack.get("max_length"):  # mapped positions keep the table's size: the patch records the limit
        return int(stack["max_length"])
    config = model.config
    offset = (config.pad_token_id or 0) + 1 if config.model_type in _OFFSET_TYPES else 0
    return int(config.max_position_embeddings) - offset


def apply_method(model: torch.nn.Module, method: ProbeMethod, tokenizer: Any = None) -> torch.nn.Module:
    """Apply `method`'s extension or swap to `model` in place (chunking happens at embedding time).

    Raises:
        ValueError, TypeError: from `patch_model` / `extend_positions` (unknown encoding, bad option; an
            `attention_scale` that this hf_posenc's `patch_model` does not take is its TypeError).
    """
    import hf_posenc

    extra = {"attention_scale": method.attention_scale} if method.attention_scale is not None else {}
    replace = hf_posenc.patch_spec(model) is not None
    common: dict[str, Any] = dict(replace=replace, **extra)
    if method.max_length:  # patch_model takes a tokenizer only to set its limit to max_length
        common.update(max_length=method.max_length, tokenizer=tokenizer)
    if method.init and not extra and not replace:
        hf_posenc.extend_positions(model, method.max_length, init=method.init, tokenizer=tokenizer)
    elif method.init or method.position_ids:
        mapping = {"init": method.init} if method.init else {"position_ids": method.position_ids}
        if method.group_size is not None:
            mapping["group_size"] = method.group_size
        hf_posenc.patch_model(model, "learned", **mapping, **common)
    elif method.encoding is not None:
        hf_posenc.patch_model(model, method.encoding, keep_absolute=method.keep_absolute, **method.options, **common)
    elif extra:
        hf_posenc.patch_model(model, "learned", **common)
    elif method.max_length:
        raise ValueError(
            f"max_length={method.max_length} needs a way to reach it: an extension (--init copy|interpolate|"
            "sinusoidal|random), mapped positions (--position_ids recurrent|grouped) or an --encoding."
        )
    return model


def build_model(checkpoint: str, method: ProbeMethod) -> tuple[torch.nn.Module, Any, int]:
    """Load `checkpoint` (folder, Hub id or all-MiniLM-L6-v2) as a base model and apply `method`.

    Returns:
        The model in eval mode, its tokenizer, and the checkpoint's trained length (before the method).
    """
    from transformers import AutoModel, AutoTokenizer

    import hf_posenc

    path = resolve_checkpoint(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = hf_posenc.from_pretrained(path, AutoModel).eval()
    trained = input_limit(model)
    apply_method(model, method, tokenizer)
    return model.eval(), tokenizer, trained


def check_lengths(lengths: Sequence[int], limit: int, method: ProbeMethod) -> None:
    """A ValueError naming the fix when a probe length exceeds what the (patched) model accepts."""
    too_long = [n for n in lengths if n > limit]
    if too_long and not method.chunked:
        raise ValueError(
            f"Probe length(s) {too_long} exceed the {limit} positions that method {method.name!r} allows. Pass "
            f"--max_length {max(too_long)} with an extension (--init copy|interpolate|sinusoidal|random), mapped "
            "positions (--position_ids recurrent|grouped) or a relative --encoding; or --chunked; or lower --lengths."
        )


# ---------------------------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------------------------


def chunk_document(input_ids: Sequence[int], chunk_length: int, tokenizer: Any) -> list[list[int]]:
    """Split a document (special tokens included) into windows of at most `chunk_length` tokens.

    The document's special tokens are stripped, the body cut into pieces of `chunk_length - specials` tokens, and
    each piece wrapped in the special tokens again (BERT: [CLS] piece [SEP]); a document that fits is one chunk.
    """
    ids = list(input_ids)
    if len(ids) <= chunk_length:
        return [ids]
    layout = _Layout(tokenizer)
    step = chunk_length - layout.specials
    if step < 1:
        raise ValueError(f"chunk_length={chunk_length} leaves no room beside {layout.specials} special tokens.")
    body = ids[len(layout.prefix) : len(ids) - len(layout.suffix)]
    return [layout.wrap(body[start : start + step]) for start in range(0, len(body), step)]


class ModelEmbedder:
    """Embed token-id sequences with a transformers encoder: mean (over the attention mask) or CLS pooling.

    With `chunk_length`, each sequence longer than it is embedded as chunks (`chunk_document`) and its embedding is
    the token-count-weighted mean of the chunks' pooled embeddings, `sum_i n_i e_i / sum_i n_i`, where `n_i` counts
    chunk i's tokens including its special tokens (so with mean pooling a document's every token weighs the same,
    whichever chunk it fell in). This is the chunking baseline of LongEmbed (Zhu et al. 2024).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        pooling: str = "mean",
        batch_size: int = 8,
        chunk_length: int | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}: choose from {', '.join(POOLINGS)}.")
        self.model, self.tokenizer, self.pooling = model, tokenizer, pooling
        self.batch_size, self.chunk_length = batch_size, chunk_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @torch.inference_mode()
    def pooled(self, sequences: list[list[int]]) -> torch.Tensor:
        """One pooled embedding per sequence (no chunking), in batches of `batch_size`, padded on the right."""
        outputs = []
        device = next(self.model.parameters()).device
        for start in range(0, len(sequences), self.batch_size):
            batch = sequences[start : start + self.batch_size]
            width = max(len(s) for s in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, sequence in enumerate(batch):
                ids[row, : len(sequence)] = torch.tensor(sequence)
                mask[row, : len(sequence)] = 1
            hidden = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.float()
            if self.pooling == "cls":
                outputs.append(hidden[:, 0].cpu())
            else:
                weights = mask.to(hidden.device, hidden.dtype).unsqueeze(-1)
                outputs.append(((hidden * weights).sum(1) / weights.sum(1)).cpu())
        return torch.cat(outputs)

    def __call__(self, sequences: list[list[int]]) -> torch.Tensor:
        if not self.chunk_length:
            return self.pooled(sequences)
        chunks = [chunk_document(s, self.chunk_length, self.tokenizer) for s in sequences]
        flat = [chunk for document in chunks for chunk in document]
        embeddings = self.pooled(flat)
        out, index = [], 0
        for document in chunks:
            counts = torch.tensor([len(c) for c in document], dtype=embeddings.dtype).unsqueeze(-1)
            part = embeddings[index : index + len(document)]
            out.append((part * counts).sum(0) / counts.sum())
            index += len(document)
        return torch.stack(out)


class DynamicEmbedder:
    """Embed each input on the checkpoint extended for its own length (`ProbeMethod.dynamic`, LongEmbed's setting).

    An input of L tokens goes to a model extended to `s * T` positions with `s = ceil(L / T)`: `s = 1` is the stock
    model, so short inputs and queries are unchanged; one model per scale is built on first use and kept.
    """

    def __init__(self, checkpoint: str, method: ProbeMethod, *, pooling: str = "mean", batch_size: int = 8) -> None:
        self.checkpoint, self.method, self.pooling, self.batch_size = checkpoint, method, pooling, batch_size
        stock, self.tokenizer, self.trained = build_model(checkpoint, ProbeMethod(name="stock"))
        self.embedders = {1: ModelEmbedder(stock, self.tokenizer, pooling=pooling, batch_size=batch_size)}
        self.patch_specs: dict[int, Any] = {}

    def scale(self, length: int) -> int:
        return max(1, -(-length // self.trained))

    def embedder(self, scale: int) -> ModelEmbedder:
        if scale not in self.embedders:
            import hf_posenc

            extended = dataclasses.replace(self.method, max_length=scale * self.trained, dynamic=False)
            model, tokenizer, _ = build_model(self.checkpoint, extended)
            self.patch_specs[scale] = hf_posenc.patch_spec(model)
            self.embedders[scale] = ModelEmbedder(model, tokenizer, pooling=self.pooling, batch_size=self.batch_size)
        return self.embedders[scale]

    def __call__(self, sequences: list[list[int]]) -> torch.Tensor:
        out: list[torch.Tensor | None] = [None] * len(sequences)
        by_scale: dict[int, list[int]] = {}
        for index, sequence in enumerate(sequences):
            by_scale.setdefault(self.scale(len(sequence)), []).append(index)
        for scale, indices in sorted(by_scale.items()):
            embeddings = self.embedder(scale)([sequences[i] for i in indices])
            for row, index in enumerate(indices):
                out[index] = embeddings[row]
        return torch.stack(out)


# ---------------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------------


def retrieval_hits(queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
    """Each query's Acc@1 credit: 1 when its own document (cosine) is strictly nearest, 1 / (k + 1) when it ties with
    k other documents for nearest (the expected hit under random tie-breaking), else 0.

    Args:
        queries, documents: (n, dim) embeddings; row i of each belong together.

    Returns:
        A float64 tensor of shape (n,), values in [0, 1].
    """
    q = F.normalize(queries.double(), dim=-1)
    d = F.normalize(documents.double(), dim=-1)
    scores = q @ d.T
    own = scores.diagonal()
    nearest = scores.amax(dim=1)
    tied = (scores == nearest[:, None]).sum(dim=1)  # documents at the highest similarity, own one included if there
    return torch.where(own == nearest, 1.0 / tied.double(), torch.zeros_like(own))


def evaluate(
    probe_set: ProbeSet,
    embed: Embedder,
    *,
    lengths: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = True,
    description: str = "probe",
) -> dict[str, Any]:
    """Score an embedding function on a probe set.

    Args:
        probe_set: From `load_probe_set` / `generate_probe_set`.
        embed: Token ids -> embeddings (a `ModelEmbedder`, or any function, e.g. a constructed one in tests).
        lengths: The lengths to score (default all of the set's).
        batch_size: Documents handed to `embed` at a time (the progress bar advances per batch).
        progress: Show a tqdm bar over documents.
        description: The bar's label.

    Returns:
        `{"acc_at_1": {task: {length: acc}}, "by_depth": {task: {length: {depth: acc}}},
        "seconds": {task: {length: s}}, "candidates": {task: {length: n}}, "tied_queries": {task: {length: n}}}`
        (lengths and depths as strings, as in JSON; a tied query got a share of a hit, see `retrieval_hits`).
    """
    from tqdm.auto import tqdm

    groups = [g for g in probe_set.groups if lengths is None or g.length in lengths]
    result: dict[str, dict] = {"acc_at_1": {}, "by_depth": {}, "seconds": {}, "candidates": {}, "tied_queries": {}}
    bar = tqdm(total=sum(len(g.documents) for g in groups), desc=description, unit="doc", disable=not progress)
    for group in groups:
        bar.set_postfix(task=group.task, length=group.length)
        start = time.perf_counter()
        parts = []
        for first in range(0, len(group.documents), batch_size):
            batch = group.documents[first : first + batch_size]
            parts.append(embed([d.input_ids for d in batch]))
            bar.update(len(batch))
        documents = torch.cat(parts)
        queries = embed([d.query_ids for d in group.documents])
        hits = retrieval_hits(queries, documents)
        seconds = time.perf_counter() - start
        task, length = group.task, str(group.length)
        result["acc_at_1"].setdefault(task, {})[length] = hits.mean().item()
        result["tied_queries"].setdefault(task, {})[length] = int(((hits > 0) & (hits < 1)).sum())
        depths: dict[str, list[float]] = {}
        for document, hit in zip(group.documents, hits.tolist()):
            depths.setdefault(str(document.depth), []).append(hit)
        result["by_depth"].setdefault(task, {})[length] = {k: sum(v) / len(v) for k, v in depths.items()}
        result["seconds"].setdefault(task, {})[length] = round(seconds, 2)
        result["candidates"].setdefault(task, {})[length] = len(group.documents)
    bar.close()
    return result
