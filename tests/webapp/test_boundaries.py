"""training.rlhf is the pure core: no Django, nothing from the Django side (belt and braces to lint-imports)."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "training" / "rlhf"
FORBIDDEN_ROOTS = {"django", "rest_framework", "django_tasks", "django_tasks_db", "annotate", "webapp"}


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 1:
            names.append("training." + (node.module or ""))  # `from .. import x` leaves the core
    return names


def test_rlhf_core_imports_nothing_from_django_side():
    offenders = []
    for path in CORE.rglob("*.py"):
        for name in _imported_modules(path):
            root = name.split(".")[0]
            leaves_core = name.startswith("training") and not name.startswith("training.rlhf")
            if root in FORBIDDEN_ROOTS or leaves_core:
                offenders.append(f"{path.relative_to(CORE.parent.parent)}: {name}")
    assert offenders == []


def test_the_checker_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from django.db import models\nfrom training.models import TrainingRun\nimport torch\n")
    assert _imported_modules(bad) == ["django.db", "training.models", "torch"]
