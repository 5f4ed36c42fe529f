"""The package is layered: each core module imports only the layers below it, hub only the core, and no private name
crosses a module boundary (see the Development section of the README).

The contracts live in pyproject.toml (`[tool.importlinter]`) and are checked with import-linter; the grimp walk below
adds what import-linter does not check (the package root imported from inside, function-local imports, private
names across modules).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hf_posenc"

LAYERS = [
    "hf_posenc.posenc_loader",
    "hf_posenc.hub",
    "hf_posenc.patching | hf_posenc.docs",
    "hf_posenc.extension",
    "hf_posenc.state",
    "hf_posenc.config_form | hf_posenc.trainable",
    "hf_posenc.record",
    "hf_posenc.attention",
    "hf_posenc.encodings | hf_posenc.augmentation",
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


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the contracts of `root`/pyproject.toml, on the `hf_posenc` package found under `root`."""
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]
    environment = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [*command, "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_linter_contracts_are_kept():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("encodings/base.py", "from hf_posenc.recipes import sweep", "Layers"),
        ("encodings/rope.py", "from hf_posenc import patching", "Layers"),
        ("hub/format.py", "from hf_posenc.bench import report", "never import the recipes or the bench"),
        ("bench/report.py", "from hf_posenc.recipes import stats", "The bench never imports the recipes"),
    ],
    ids=["core imports recipes", "core imports upward", "hub imports bench", "bench imports recipes"],
)
def test_import_linter_reports_an_upward_import(tmp_path, module, line, contract):
    shutil.copytree(PACKAGE, tmp_path / "hf_posenc", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "hf_posenc" / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}  # an upward import\n", encoding="utf-8")
    done = lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout[-3000:]
    broken = [text for text in done.stdout.splitlines() if text.endswith("BROKEN")]
    assert any(contract in text for text in broken), done.stdout[-3000:]
    assert f"hf_posenc.{module.removesuffix('.py').replace('/', '.')}" in done.stdout


def test_every_core_module_sits_in_a_layer():
    """A new core module must be placed in the layer order (here and in pyproject's import-linter contracts)."""
    named = {name.strip() for line in LAYERS for name in line.split("|")}
    entry_points_and_shims = {"hf_posenc.cli", "hf_posenc.data", "hf_posenc.training", "hf_posenc.reporting"}
    modules = {f"hf_posenc.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    packages = {f"hf_posenc.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    missing = sorted(modules - named - entry_points_and_shims)
    assert not missing, f"place these modules in LAYERS and in pyproject.toml's import-linter contracts: {missing}"
    contracts = (PACKAGE.parent / "pyproject.toml").read_text()
    unlisted = sorted(m for m in named | packages if f'"{m}' not in contracts)
    assert not unlisted, unlisted
