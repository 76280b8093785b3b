"""The architecture contract (docs/ARCHITECTURE.md): layers import downward only, no import cycles,
every top-level module placed in a layer, small modules and a thin ``Repo``.

The contract itself is import-linter's, declared in pyproject.toml; these tests run it on this tree
and on copies with one deliberate violation each, so a contract that stopped checking would fail here.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mvc_magics"
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
MAX_MODULE_LINES = 400
MAX_REPO_LINES = 250
# Third-party packages that are optional or slow to import: the only reason a module may import
# one of the package's own modules inside a function (never to dodge an import cycle).
HEAVY = {"ipywidgets", "keras", "tensorflow", "IPython", "nbclient", "nbformat", "matplotlib", "torch", "sklearn",
         "skops", "jax", "flax", "lightning", "lightgbm"}


def lint(tree: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("importlinter")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-c", LINT], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """This project's package and contract, copied, to break on purpose."""
    shutil.copytree(PACKAGE, tmp_path / "mvc_magics", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + "\n" + text + "\n")


def test_the_layer_and_cycle_contracts_hold_on_this_tree():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Each layer imports only the layers below it KEPT" in result.stdout
    assert "No import cycles between the modules of a folder KEPT" in result.stdout
    assert "The storage folders import downward only KEPT" in result.stdout


LAYERS_BROKEN = "Each layer imports only the layers below it BROKEN"
CYCLES_BROKEN = "No import cycles between the modules of a folder BROKEN"

# (what is broken on purpose, file appended to, text appended, what the report must say)
VIOLATIONS = [
    ("the core reaching up to the API", "core/hashing.py", "from ..api import Repo",
     [LAYERS_BROKEN, "mvc_magics.core.hashing -> mvc_magics.api"]),
    ("an upward import hidden inside a function", "storage/local/index.py",
     "def _sneaky():\n    from ...operations import versions\n    return versions",
     [LAYERS_BROKEN, "mvc_magics.storage.local.index -> mvc_magics.operations.versions"]),
    ("the snapshot reader reaching up to the local store", "storage/snapshots/snapshot.py",
     "from ..local.store import Store",
     ["The storage folders import downward only BROKEN",
      "mvc_magics.storage.snapshots.snapshot -> mvc_magics.storage.local.store"]),
    ("an operation importing Repo", "operations/tags.py", "from ..api.repo import Repo",
     [LAYERS_BROKEN, "mvc_magics.operations.tags -> mvc_magics.api.repo"]),
    # merge imports soups; soups importing merge back closes a cycle within operations/.
    ("a cycle inside one layer", "operations/soups.py", "from . import merge",
     [CYCLES_BROKEN, "Each layer imports only the layers below it KEPT"]),
]


@pytest.mark.parametrize(("what", "module", "text", "expected"), VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_a_deliberate_violation_breaks_the_contract(tree_copy, what, module, text, expected):
    append(tree_copy / "mvc_magics" / module, text)
    result = lint(tree_copy)
    assert result.returncode == 1, f"{what} went unnoticed:\n{result.stdout}"
    for line in expected:
        assert line in result.stdout


def test_a_new_top_level_module_must_be_placed_in_a_layer(tree_copy):
    (tree_copy / "mvc_magics/helpers.py").write_text('"""A module nobody placed."""\n')
    result = lint(tree_copy)
    assert result.returncode == 1
    assert "The following modules are not listed as layers:\n\n- mvc_magics.helpers" in result.stdout


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_is_longer_than_one_sitting():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules()}
    assert not {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES}


def test_the_lower_layers_are_listed_module_by_module_in_the_architecture():
    """docs/ARCHITECTURE.md names every module of operations/, storage/ and core/ (the layers it
    describes module by module), so the map a reader starts from leaves none out."""
    import re

    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    unnamed = [str(p.relative_to(ROOT)) for p in _modules()
               if p.relative_to(PACKAGE).parts[0] in ("operations", "storage", "core") and p.name != "__init__.py"
               and not re.search(rf"[`.]{re.escape(p.stem)}(\.py)?[`.]", text)]  # `x.py`, `a.b.x.f`
    assert not unnamed


def test_repo_is_a_thin_facade():
    """``Repo`` and the mixins it is made of (api/team.py) only bind operations to the store."""
    tree = ast.parse((PACKAGE / "api" / "repo.py").read_text())
    repo = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Repo")
    assert repo.end_lineno - repo.lineno + 1 < MAX_REPO_LINES
    assert [ast.unparse(b) for b in repo.bases] == ["TeamMethods"]
    team = ast.parse((PACKAGE / "api" / "team.py").read_text())
    classes = [repo, *(n for n in team.body if isinstance(n, ast.ClassDef))]
    for cls in classes:
        for method in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            body = [s for s in method.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            assert len(body) <= 3, f"{cls.name}.{method.name} does more than delegate ({len(body)} statements)"


def _imported_module(node: ast.ImportFrom, module: Path) -> str:
    package = list(module.relative_to(ROOT).with_suffix("").parts)[:-1]
    base = package[: len(package) - node.level + 1] if node.level else []
    return ".".join(base + ([node.module] if node.module else []))


def _heavy_imports_of(module: str) -> set[str]:
    """The optional or slow third-party packages that importing ``module`` loads."""
    code = f"import sys, {module}; print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    return set(ast.literal_eval(result.stdout.strip().splitlines()[-1]))


def test_imports_inside_functions_only_defer_optional_or_heavy_packages():
    """A lazy import of the package's own module is allowed only where that module loads an
    optional or slow third-party package; never to hide an import cycle."""
    lazy: dict[str, list[str]] = {}
    for module in _modules():
        tree = ast.parse(module.read_text())
        top_level = {id(n) for n in tree.body}
        type_checking = {id(n) for stmt in tree.body if isinstance(stmt, ast.If)
                         and "TYPE_CHECKING" in ast.unparse(stmt.test) for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or id(node) in top_level or id(node) in type_checking:
                continue
            target = _imported_module(node, module)
            if target.startswith("mvc_magics"):
                # ``from .. import keras_layers`` imports a module; ``from .x import f`` imports x.
                submodules = [f"{target}.{a.name}" for a in node.names
                              if ROOT.joinpath(*target.split("."), a.name + ".py").exists()]
                for imported in submodules or [target]:
                    lazy.setdefault(imported, []).append(f"{module.relative_to(ROOT)}:{node.lineno}")
    assert lazy, "expected some deferred imports (the widget panels, the Keras layers)"
    offenders = {target: places for target, places in lazy.items() if not _heavy_imports_of(target)}
    assert not offenders
