"""hf_posenc: swap, extend and publish the position encoding of pretrained transformers."""

__version__ = "0.1.0"
