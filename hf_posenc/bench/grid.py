"""What a benchmark run measures: model shapes, the grid of lengths, batches and modes, and the presets.

`SHAPES` are config fields of real checkpoints' shapes (weights are random); a `Grid` expands to `Case`s (one shape,
length, batch and mode each), skipping those past a shape's token caps; `PRESETS` are the grids `--preset` names.
"""

from __future__ import annotations

from dataclasses import dataclass

BERT_ENCODINGS = ("learned", "sinusoidal", "t5", "alibi", "rope", "relative_key", "relative_key_query", "nezha")
BART_ENCODINGS = (*BERT_ENCODINGS, "none")  # `none` is refused on bidirectional stacks: BART's decoder only
MODES = ("forward", "train")


@dataclass(frozen=True)
class Shape:
    """A model shape: its family, config fields and the trained length (the learned table of the checkpoint)."""

    family: str
    config: dict[str, int]
    trained_length: int
    max_tokens: int  # the full grid skips batch * length above this (time and memory on a 2-core CPU) ...
    max_train_tokens: int  # ... and above this in training


SHAPES: dict[str, Shape] = {
    "minilm": Shape(
        "bert",
        dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
        512,
        8192,
        4096,
    ),
    "base": Shape(
        "bert",
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
        512,
        4096,
        2048,
    ),
    "bart": Shape(
        "bart",
        dict(
            d_model=768,
            encoder_layers=6,
            decoder_layers=6,
            encoder_attention_heads=12,
            decoder_attention_heads=12,
            encoder_ffn_dim=3072,
            decoder_ffn_dim=3072,
        ),
        1024,
        2048,
        2048,
    ),
}


@dataclass
class Grid:
    """What one run measures. `budget_s` is the time-measurement budget per configuration (the rounds it affords,
    within `min_reps..max_reps`); memory is measured for the `memory_modes` at the `memory_lengths` (all if None)."""

    shapes: tuple[str, ...]
    lengths: tuple[int, ...]
    batches: tuple[int, ...]
    modes: tuple[str, ...] = MODES
    encodings: tuple[str, ...] | None = None  # None: every encoding of the family
    memory_modes: tuple[str, ...] = ("train",)
    memory_lengths: tuple[int, ...] | None = None
    memory_batches: tuple[int, ...] | None = None
    budget_s: float = 60.0
    min_reps: int = 3
    max_reps: int = 15
    extras: bool = True  # patch time and import time
    threads: int | None = None  # torch threads (None: torch's default, one per core)
    cap_tokens: bool = True
    token_cap: int | None = None  # one cap on batch * length for every shape and mode (None: each shape's own caps)
    device: str = "cpu"
    dtype: str = "float32"
    kernels: bool = False  # profile one step per model and record the SDPA kernels it reached

    def cases(self) -> list[Case]:
        cases = [
            Case(shape, length, batch, mode)
            for shape in self.shapes
            for batch in self.batches
            for length in self.lengths
            for mode in self.modes
            if not self.cap_tokens or batch * length <= (self.token_cap or _cap(shape, mode))
        ]
        return sorted(cases, key=lambda c: (c.shape != "minilm", c.batch * c.length, c.shape, c.mode))

    def encodings_for(self, shape: str) -> tuple[str, ...]:
        family = BART_ENCODINGS if SHAPES[shape].family == "bart" else BERT_ENCODINGS
        return tuple(e for e in family if self.encodings is None or e in self.encodings)


def _cap(shape: str, mode: str) -> int:
    return SHAPES[shape].max_train_tokens if mode == "train" else SHAPES[shape].max_tokens


PRESETS: dict[str, Grid] = {
    "quick": Grid(("minilm",), (128, 512), (1,), budget_s=4.0, min_reps=3, max_reps=5, memory_lengths=(512,)),
    "targets": Grid(("minilm", "base"), (512, 2048), (1,), budget_s=90.0, min_reps=5, max_reps=15),
    "full": Grid(
        ("minilm", "base", "bart"),
        (128, 512, 1024, 2048, 4096),
        (1, 8),
        budget_s=30.0,
        max_reps=9,
        memory_lengths=(512, 2048),
        memory_batches=(1,),
    ),
}
PRESETS["gpu"] = Grid(
    ("minilm", "base", "bart"),
    (512, 2048, 4096),
    (1, 8),
    budget_s=1.0,
    min_reps=5,
    max_reps=30,
    memory_batches=(1,),
    extras=False,
    token_cap=16384,
    device="cuda",
    dtype="bfloat16",
    kernels=True,
)
"""`quick`: a smoke test (a few minutes); `targets`: the configurations the targets name; `full`: the grid,
minus configurations past each shape's `max_tokens` / `max_train_tokens` (batch * length); memory in training at
batch 1, L = 512 and 2048; `gpu`: the GPU check (CUDA, bf16): time, peak GPU memory and the SDPA kernel of
every encoding, three shapes, L = 512-4096, batch 1 and 8 (up to 16384 tokens); memory in training at batch 1."""


@dataclass(frozen=True)
class Case:
    shape: str
    length: int
    batch: int
    mode: str

    def label(self) -> str:
        return f"{self.shape} L={self.length} B={self.batch} {self.mode}"
