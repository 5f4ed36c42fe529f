"""The package is layered: each core module imports only the layers below it, hub only the core, and no private name
crosses a module boundary (see the Development section of the README)."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

PACKAGE = Path(__file__).parent.parent / "hf_posenc"

LAYERS = [
    "hf_posenc.posenc_loader",
    "hf_posenc.hub",
    "hf_posenc.patching | hf_posenc.docs",
    "hf_posenc.extension",
    "hf_posenc.state",
    "hf_posenc.config_form",
    "hf_posenc.record",
    "hf_posenc.attention",
    "hf_posenc.encodings",
    "hf_posenc.relative_terms | hf_posenc.blockwise | hf_posenc.architectures",
    "hf_posenc.version | hf_posenc.option_checks",
]
"""Highest first: a module may import the layers below its own, never above (nor its siblings on one line)."""

CORE_AND_HUB = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in ("recipes", "bench")]


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("hf_posenc")


def _members(graph, module: str) -> set[str]:
    return {module} | graph.find_descendants(module)


def test_core_and_hub_import_only_the_layers_below(graph):
    layers = [[name.strip() for name in line.split("|")] for line in LAYERS]
    illegal = []
    for index, layer in enumerate(layers):
        below_or_level = {m for line in layers[index:] for m in line}
        for module in layer:
            allowed = {m for name in below_or_level for m in _members(graph, name)}
            for member in _members(graph, module):
                imported = {i for i in graph.find_modules_directly_imported_by(member) if i.startswith("hf_posenc")}
                siblings = {m for name in layer if name != module for m in _members(graph, name)}
                wrong = sorted(i for i in imported if i not in allowed or i in siblings)
                illegal += [f"{member} -> {i}" for i in wrong if i != "hf_posenc"]
                if "hf_posenc" in imported:
                    illegal.append(f"{member} -> hf_posenc (the package root imports every layer)")
    assert not illegal, illegal


def test_hub_never_imports_the_recipes_or_the_bench(graph):
    for member in _members(graph, "hf_posenc.hub"):
        imported = graph.find_modules_directly_imported_by(member)
        assert not {i for i in imported if i.startswith(("hf_posenc.recipes", "hf_posenc.bench"))}, member


@pytest.mark.parametrize("path", CORE_AND_HUB, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_local_imports_and_no_private_names_across_modules(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    problems = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and path != PACKAGE / "cli.py"
        ):  # its lazy dispatch
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.level or (inner.module or "").startswith("hf_posenc")):
                    problems.append(f"line {inner.lineno}: function-local import of {inner.module}")
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("hf_posenc")):
            private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            problems += [f"line {node.lineno}: private {name} from {node.module}" for name in private]
    assert not problems, problems
