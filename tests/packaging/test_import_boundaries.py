"""Serving code stays deployable on its own: a static check of every import under ``services/``.

Rules (docs/architecture.md): nothing in ``services/`` imports torch, the trainer, the exporter
or the command line (``cli``); the three services (encoder, scorer, ranker) never import each
other, and ``services/common`` imports none of them. Imports are read from the AST, including
relative imports and ``importlib.import_module("...")`` with a literal name, so a lazy import
inside a function is caught too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_TOP_LEVEL = frozenset({"torch", "trainer", "export", "cli"})
SERVICE_PACKAGES = frozenset({"encoder", "scorer", "ranker"})


def module_name(path: Path, root: Path) -> str:
    """``<root>/services/scorer/app.py`` -> ``services.scorer.app``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path) -> Iterator[tuple[int, list[str]]]:
    """(line, absolute module names) per import statement; ``from a import b`` gives ``a``
    and ``a.b`` (``b`` may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    own = module_name(path, root).split(".")
    package = own if path.name == "__init__.py" else own[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, [alias.name]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield node.lineno, [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
            if called in ("import_module", "__import__") and literal:
                yield node.lineno, [first.value]


def rule_broken(owner: str, name: str) -> str:
    """Why ``services.<owner>`` may not import ``name`` ("" when it may)."""
    parts = name.split(".")
    if parts[0] in FORBIDDEN_TOP_LEVEL:
        return f"serving code imports {name}"
    other = parts[1] if parts[0] == "services" and len(parts) > 1 else ""
    if other in SERVICE_PACKAGES - {owner} and (owner in SERVICE_PACKAGES or owner == "common"):
        return f"services.{owner} imports {name}"
    return ""


def boundary_violations(root: Path) -> list[str]:
    """Every import statement under ``<root>/services`` that breaks a rule: ``path:line: why``."""
    problems = []
    for path in sorted((root / "services").rglob("*.py")):
        own = module_name(path, root).split(".")
        owner = own[1] if len(own) > 1 else ""
        for line, names in imported_modules(path, root):
            reasons = [why for name in names if (why := rule_broken(owner, name))]
            if reasons:
                problems.append(f"{path.relative_to(root)}:{line}: {reasons[0]}")
    return problems


def test_services_import_no_training_code_no_cli_and_not_each_other() -> None:
    assert boundary_violations(ROOT) == []


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_check_catches_every_kind_of_violation(tmp_path: Path) -> None:
    _write(tmp_path, "services/__init__.py", "")
    _write(tmp_path, "services/common/ok.py", "import grpc\nfrom services.common import config\n")
    _write(tmp_path, "services/scorer/app.py", "def f():\n    import torch\n")
    _write(tmp_path, "services/scorer/cmd.py", "from cli.main import main\n")
    _write(tmp_path, "services/ranker/a.py", "from services.encoder.app import EncoderApp\n")
    _write(tmp_path, "services/ranker/b.py", "from services import scorer\n")
    _write(tmp_path, "services/ranker/c.py", "from ..encoder import vocab\n")
    _write(tmp_path, "services/ranker/d.py", "from .downstream import X\nfrom . import policy\n")
    _write(
        tmp_path,
        "services/encoder/e.py",
        "import importlib\nimportlib.import_module('trainer.data')\n",
    )
    _write(tmp_path, "services/common/f.py", "from services.ranker.config import RankerConfig\n")
    _write(tmp_path, "services/encoder/g.py", "from export.exporter import load_model\n")
    found = boundary_violations(tmp_path)
    assert found == [
        "services/common/f.py:1: services.common imports services.ranker.config",
        "services/encoder/e.py:2: serving code imports trainer.data",
        "services/encoder/g.py:1: serving code imports export.exporter",
        "services/ranker/a.py:1: services.ranker imports services.encoder.app",
        "services/ranker/b.py:1: services.ranker imports services.scorer",
        "services/ranker/c.py:1: services.ranker imports services.encoder",
        "services/scorer/app.py:2: serving code imports torch",
        "services/scorer/cmd.py:1: serving code imports cli.main",
    ]


def test_starting_a_service_loads_no_training_code_and_no_cli() -> None:
    """The same rule at run time: what a service process imports, transitively."""
    code = (
        "import sys\n"
        "import services.encoder.main, services.scorer.main, services.ranker.main\n"
        "import services.encoder.app, services.scorer.app, services.ranker.app\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'trainer', 'export', "
        "'cli', 'onnx'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
