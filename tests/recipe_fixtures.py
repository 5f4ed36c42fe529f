"""Tiny checkpoints and fixture data for the recipe tests (built on the fly, nothing downloaded)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

POSITIVE = ["good", "great", "fine", "love", "best", "nice", "superb", "fun"]
NEGATIVE = ["bad", "awful", "poor", "hate", "worst", "dull", "boring", "weak"]
NEUTRAL = [f"w{i}" for i in range(70)]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab() -> dict[str, int]:
    return {token: index for index, token in enumerate(SPECIALS + POSITIVE + NEGATIVE + NEUTRAL)}


def make_tiny_bert(folder: Path, max_positions: int = 64, **config) -> Path:
    """A random 2-layer BERT (hidden 32, 4 heads) with a WordPiece tokenizer over the fixture words."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    BertTokenizer(vocab=vocab).save_pretrained(folder)
    settings = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        pad_token_id=0,
    )
    BertModel(BertConfig(**{**settings, **config})).save_pretrained(folder)
    return folder


def review(rng: random.Random, label: str, words: int) -> str:
    """A document whose sentiment words sit among filler, some early and some late."""
    cue = POSITIVE if label == "pos" else NEGATIVE
    tokens = [rng.choice(NEUTRAL) for _ in range(words)]
    for _ in range(max(2, words // 10)):
        tokens[rng.randrange(words)] = rng.choice(cue)
    return " ".join(tokens)


def make_reviews_csv(path: Path, count: int = 80, seed: int = 0, columns=("text", "label")) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for index in range(count):
            label = "pos" if index % 2 else "neg"
            writer.writerow([review(rng, label, rng.randint(20, 120)), label])
    return path


def make_running_text(path: Path, paragraphs: int = 40, seed: int = 1) -> Path:
    """Paragraphs that count through the filler words from a random start: a masked word follows from its
    neighbours, so masked-LM loss can fall within a few steps."""
    rng = random.Random(seed)
    lines = []
    for _ in range(paragraphs):
        start = rng.randrange(len(NEUTRAL))
        lines.append(" ".join(NEUTRAL[(start + i) % len(NEUTRAL)] for i in range(200)))
    path.write_text("\n\n".join(lines) + "\n")
    return path


def make_recipe_assets(root: Path) -> dict[str, Path]:
    """The tiny checkpoint, review CSV and running text that the recipe tests train on, under `root`."""
    return {
        "bert": make_tiny_bert(root / "bert"),
        "reviews": make_reviews_csv(root / "reviews.csv"),
        "running": make_running_text(root / "running.txt"),
        "root": root,
    }


def tiny_run_config(assets: dict[str, Path], folder: Path, **values):
    """A `RunConfig` for the tiny BERT on the fixture reviews (ALiBi, batch 8, learning rate 1e-3, no progress bars),
    writing to `folder`, with `values` (lengths, steps, any override, `output_dir` too) on top."""
    from hf_posenc.recipes.settings import RunConfig

    base = dict(
        model=str(assets["bert"]),
        dataset=str(assets["reviews"]),
        encoding="alibi",
        batch_size=8,
        learning_rate=1e-3,
        output_dir=str(folder),
        progress=False,
    )
    return RunConfig.from_dict({**base, **values})
