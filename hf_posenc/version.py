"""The installed hf_posenc version (recorded in every patch record; pyproject.toml holds the same)."""

__version__ = "0.1.0"
