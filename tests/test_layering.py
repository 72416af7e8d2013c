"""Layering: the library layers never import the layers above them (the pipeline, the bundled model, the CLI).

Checked on the source with ``ast``, so an import inside a function counts as much as one at the top of a file, and
in a fresh interpreter, so that importing the library layers does not pull the upper layers in by another route.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "arvision"
LOWER_LAYERS = ("sampling", "models", "tokenizers", "families", "evaluation", "training")
UPPER = ("arvision.cli", "arvision.pipeline", "arvision.bundled", "arvision.serve")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports, anywhere in the file: ``import a.b`` gives a.b,
    ``from a import b`` gives a and a.b (b may be a module), relative imports are resolved, and
    ``importlib.import_module("a.b")`` / ``__import__("a.b")`` with a literal name count too."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def upward_imports(path: Path, forbidden=UPPER) -> list[str]:
    """The modules of ``forbidden`` (or their sub-modules) that the file at ``path`` imports."""
    names = imported_modules(path.read_text(), _module_name(path), path.name == "__init__.py")
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


def lower_layer_files() -> list[Path]:
    return sorted(p for layer in LOWER_LAYERS for p in (SRC / layer).rglob("*.py"))


def test_the_checker_sees_imports_inside_functions_and_relative_ones():
    source = '''
import torch
from arvision.errors import ArvisionError

def run():
    from arvision.pipeline import ARPipeline
    from .. import bundled
    from ..cli.sample import describe
    import importlib
    importlib.import_module("arvision.cli")
'''
    names = imported_modules(source, "arvision.sampling.thing")
    assert {"arvision.pipeline", "arvision.bundled", "arvision.cli.sample", "arvision.cli"} <= names
    assert "arvision.errors" in names and "torch" in names


def test_every_lower_layer_is_checked():
    files = lower_layer_files()
    for layer in LOWER_LAYERS:
        assert any(p.parent.name == layer for p in files), f"no module found under {layer}/"
    assert len(files) > 30


@pytest.mark.parametrize("path", lower_layer_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_lower_layers_do_not_import_upper_layers(path):
    assert upward_imports(path) == [], (
        f"{path.relative_to(SRC)} imports {', '.join(upward_imports(path))}: the library layers "
        f"({', '.join(LOWER_LAYERS)}) must not import {', '.join(UPPER)}; move command-line code to arvision/cli/")


def test_bench_library_does_not_import_the_cli():
    assert upward_imports(SRC / "bench.py", forbidden=("arvision.cli",)) == []


def test_importing_the_library_layers_loads_no_upper_layer():
    modules = [_module_name(p) for p in lower_layer_files()] + ["arvision.bench", "arvision.images"]
    code = (f"import importlib, sys\n"
            f"for m in {modules!r}:\n"
            f"    importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.startswith({UPPER!r})))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- no branch on a paradigm's name outside families/ --------------------------------------------------------------
def names_of_parts() -> set[str]:
    """Family names, tokenizer kinds and block kinds: what code outside ``families/`` must not compare against."""
    from arvision.families import FAMILIES
    from arvision.models.blocks import BLOCKS
    from arvision.tokenizers.models import TOKENIZERS

    return set(FAMILIES) | set(TOKENIZERS) | set(BLOCKS)


def name_branches(source: str, names: set[str]) -> list[int]:
    """Line numbers where ``source`` compares something with one of ``names`` (``x == "var"``, ``x != "vq"``,
    ``x in ("var", "flexvar")``): a branch on a paradigm's name."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        for operand in (node.left, *node.comparators):
            values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
            if any(isinstance(v, ast.Constant) and v.value in names for v in values):
                lines.append(node.lineno)
                break
    return lines


def test_the_branch_checker_finds_comparisons_with_names():
    source = 'if family == "var":\n    pass\nok = kind in ("vq", "x")\nfine = {"var": 1}\nalso = f(family="var")\n'
    assert name_branches(source, {"var", "vq"}) == [1, 3]


def test_no_module_outside_families_branches_on_a_paradigm_name():
    names = names_of_parts()
    assert {"var", "llamagen", "flexvar", "multiscale", "vq", "adaln", "llama"} <= names
    found = {str(p.relative_to(SRC)): name_branches(p.read_text(), names) for p in sorted(SRC.rglob("*.py"))
             if "families" not in p.relative_to(SRC).parts}
    found = {k: v for k, v in found.items() if v}
    assert found == {}, f"branches on a family / tokenizer / block name outside families/ (use a capability): {found}"
