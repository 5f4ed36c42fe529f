"""Loader shim that hf_posenc writes beside every checkpoint whose position encoding it replaced.

Plain transformers cannot rebuild such a model: its `config.json` says `model_type: "posenc-<type>"` (for example
`posenc-bert`), a type that only hf_posenc registers. Load the checkpoint with

    pip install hf-posenc
    import hf_posenc
    model = hf_posenc.from_pretrained(path)       # or transformers' AutoModel*.from_pretrained(path) after the import

or, without importing hf_posenc yourself, with `AutoModel*.from_pretrained(path, trust_remote_code=True)`:
transformers then runs this file, which contains no model code and only hands over to the installed hf_posenc.
"""

try:
    from hf_posenc.hub import auto_class as __getattr__  # noqa: F401  (PEP 562: the classes named in `auto_map`)
except ModuleNotFoundError as error:
    if error.name != "hf_posenc":
        raise
    raise ImportError(
        "This checkpoint's position encoding was replaced by hf_posenc, which is not installed. Install it with "
        "`pip install hf-posenc`, then load the checkpoint with `import hf_posenc; "
        "model = hf_posenc.from_pretrained(path)` (or AutoModel*.from_pretrained(path) after `import hf_posenc`)."
    ) from error
