"""The patch record: what `config.posenc` holds, typed, versioned, with one reader and one writer.

`config.posenc` stays a plain JSON dict on the config (transformers serializes config attributes as they are), in
the format hf_posenc 0.1.0 wrote:

    {"version": "0.1.0", "stacks": {"encoder": {"encoding": "alibi", "options": {...}, "keep_absolute": false,
                                                "max_length": 2048, "table_init": "copy"}},
     "activation": "gelu"}

`max_length` / `table_init` appear only when a length change recorded them; `activation` only in a saved
`config.json` (the trip-wire moved it there). Every module reads the block with `read_record` and writes it with
`write_record`; nothing else touches the dict.

Forward compatibility: a key that a newer hf_posenc added warns and is ignored; a newer *major* version, an unknown
stack or an unknown encoding is an error (the model could not be rebuilt as it was saved).
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .encodings import ENCODINGS, AttentionOptions, option_defaults
from .version import __version__

CONFIG_KEY = "posenc"
"""The `config.json` field that holds the record."""

STACK_NAMES = ("encoder", "decoder")
_HOW = "hf_posenc writes it with model.save_pretrained after hf_posenc.patch_model; was config.json edited?"


class RecordWarning(UserWarning):
    """A `posenc` block holds keys this version of hf_posenc does not know (written by a newer one): ignored."""


@dataclass(frozen=True)
class StackRecord:
    """The patch of one stack.

    Attributes:
        encoding: the canonical encoding name (a key of `hf_posenc.ENCODINGS`).
        options: its resolved options (JSON values), such that the encoding rebuilds exactly.
        keep_absolute: whether the learned absolute table was kept beside a relative encoding.
        max_length: the input limit a length change recorded, or None.
        table_init: how the new rows of a hybrid's kept table were filled (`extend_positions`), or None.
        attention_scale, attention_scale_length, attention_window, global_tokens, global_stride: the stack's
            attention options (`hf_posenc.encodings.AttentionOptions`); written only when set, so records without
            them (hf_posenc 0.1.0) load as full, unscaled attention.
    """

    encoding: str
    options: dict[str, Any] = field(default_factory=dict)
    keep_absolute: bool = False
    max_length: int | None = None
    table_init: str | None = None
    attention_scale: str | None = None
    attention_scale_length: int | None = None
    attention_window: int | None = None
    global_tokens: tuple[int, ...] = (0,)
    global_stride: int | None = None

    def with_attention(self, options: AttentionOptions) -> StackRecord:
        """This record with the attention options of a patch."""
        return replace(
            self,
            attention_scale=options.scale,
            attention_scale_length=options.scale_length,
            attention_window=options.window,
            global_tokens=tuple(options.global_tokens),
            global_stride=options.global_stride,
        )

    def attention_request(self) -> dict[str, Any]:
        """The recorded attention options as `patch_model` arguments (only those that are set)."""
        request = {}
        if self.attention_scale is not None:
            request.update(attention_scale=self.attention_scale, attention_scale_length=self.attention_scale_length)
        if self.attention_window is not None:
            request.update(attention_window=self.attention_window, global_tokens=tuple(self.global_tokens))
            if self.global_stride is not None:
                request["global_stride"] = self.global_stride
        return request

    @property
    def cls(self) -> type:
        return ENCODINGS[self.encoding]

    @property
    def keeps_table(self) -> bool:
        """Whether the stack still has its learned absolute table."""
        return self.cls.keeps_learned_table or self.keep_absolute

    @property
    def mapped(self) -> bool:
        """Whether positions are mapped into the learned table's trained rows (LongEmbed's recurrent / grouped)."""
        return self.cls.keeps_learned_table and self.options.get("position_ids") is not None

    def to_dict(self) -> dict[str, Any]:
        entry = {
            "encoding": self.encoding,
            "options": copy.deepcopy(self.options),
            "keep_absolute": self.keep_absolute,
        }
        if self.table_init is not None:
            entry["table_init"] = self.table_init
        if self.max_length is not None:
            entry["max_length"] = self.max_length
        request = self.attention_request()
        if "global_tokens" in request:
            request["global_tokens"] = list(request["global_tokens"])  # JSON has no tuples
        return {**entry, **request}

    @classmethod
    def from_dict(cls, entry: Any, where: str) -> StackRecord:
        """Parse and validate one stack's entry; `where` names it in errors."""
        if not isinstance(entry, dict) or not {"encoding", "options"} <= set(entry):
            raise ValueError(f"{where}: needs 'encoding' and 'options', got {entry!r}.")
        _warn_unknown(entry, {f.name for f in fields(cls)}, where)
        name, options = entry["encoding"], entry["options"]
        if name not in ENCODINGS:
            raise ValueError(f"{where}: unknown encoding {name!r}; valid encodings: {sorted(ENCODINGS)}.")
        if not isinstance(options, dict):
            raise ValueError(f"{where}: 'options' must be a dict, got {options!r}.")
        valid = sorted(option_defaults(ENCODINGS[name]))
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {unknown} for {name!r}; valid: {valid}.")
        return cls(
            name,
            copy.deepcopy(options),
            bool(entry.get("keep_absolute", False)),
            entry.get("max_length"),
            entry.get("table_init"),
            entry.get("attention_scale"),
            entry.get("attention_scale_length"),
            entry.get("attention_window"),
            tuple(entry.get("global_tokens", (0,))),
            entry.get("global_stride"),
        )


@dataclass(frozen=True)
class PatchRecord:
    """The whole `config.posenc` block.

    Attributes:
        stacks: stack name ("encoder" / "decoder") -> its `StackRecord`.
        version: the hf_posenc version that wrote it.
        activation: the real activation function of a saved config (see `hf_posenc.config_form.TRIPWIRE`), or None.
    """

    stacks: dict[str, StackRecord]
    version: str = __version__
    activation: str | None = None

    def with_stacks(self, stacks: dict[str, StackRecord]) -> PatchRecord:
        """This record with `stacks` merged over its own, written by this version."""
        return replace(self, stacks={**self.stacks, **stacks}, version=__version__)

    def to_dict(self) -> dict[str, Any]:
        block = {"version": self.version, "stacks": {name: s.to_dict() for name, s in self.stacks.items()}}
        if self.activation is not None:
            block["activation"] = self.activation
        return block

    @classmethod
    def from_dict(cls, block: Any) -> PatchRecord:
        """Parse and validate a `posenc` block; a `ValueError` says what is wrong."""
        if block is None:
            raise ValueError(
                f"config.json says model_type 'posenc-*' but has no 'posenc' block to rebuild the model. {_HOW}"
            )
        if not isinstance(block, dict) or not isinstance(block.get("stacks"), dict) or not block["stacks"]:
            raise ValueError(
                f"The 'posenc' block must be {{'version': ..., 'stacks': {{...}}}}, got {block!r}. {_HOW}"
            )
        check_version(block.get("version"))
        _warn_unknown(block, {"version", "stacks", "activation"}, "posenc block")
        stacks = {}
        for name, entry in block["stacks"].items():
            if name not in STACK_NAMES:
                raise ValueError(f"posenc block, stack {name!r}: unknown stack; stacks are {list(STACK_NAMES)}.")
            stacks[name] = StackRecord.from_dict(entry, f"posenc block, stack {name!r}")
        return cls(stacks, block["version"], block.get("activation"))


def _warn_unknown(entry: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(entry) - known)
    if unknown:
        warnings.warn(
            f"{where}: ignoring field(s) {unknown}, unknown to hf_posenc {__version__} (written by a newer version?); "
            f"known fields: {sorted(known)}.",
            RecordWarning,
            stacklevel=3,
        )


def check_version(version: Any) -> None:
    """Refuse a missing version and a newer major version than the installed one."""
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)\S*", version) if isinstance(version, str) else None
    if match is None:
        raise ValueError(f"The 'posenc' block has no valid version (got {version!r}); expected e.g. {__version__!r}.")
    if int(match.group(1)) > int(__version__.split(".")[0]):
        raise ValueError(
            f"This checkpoint was written by hf_posenc {version}, a newer major version than the installed "
            f"{__version__}. Upgrade: pip install -U hf-posenc."
        )


def read_record(config: Any) -> PatchRecord | None:
    """The record on a config object (None when unpatched). The reader: every module reads `config.posenc` here."""
    block = getattr(config, CONFIG_KEY, None)
    return None if block is None else PatchRecord.from_dict(block)


def write_record(config: Any, record: PatchRecord | None) -> None:
    """Put `record` on a config object as its JSON dict (None clears it). The writer."""
    setattr(config, CONFIG_KEY, None if record is None else record.to_dict())


def stack_record(config: Any, name: str) -> StackRecord | None:
    """One stack's record, or None when the model or that stack is unpatched."""
    record = read_record(config)
    return None if record is None else record.stacks.get(name)
