"""Where test helpers live: test modules import helpers, never a conftest or another test module.

A conftest holds fixtures, which pytest finds by name; importing one runs it twice (once as
pytest's plugin, once as a module) and hides where a helper comes from. Shared helpers live in
``tests/support`` (importable by the bench scripts too) or in a helper module next to the tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
FORBIDDEN_LEAVES = ("conftest",)


def imported_modules(path: Path) -> list[str]:
    """The absolute module names ``path`` imports (``from X import Y`` gives ``X`` and ``X.Y``)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def is_test_or_conftest(module: str) -> bool:
    """Whether ``module`` names a conftest or a ``test_*`` module under tests/ or bench/."""
    leaf = module.rsplit(".", 1)[-1]
    if leaf not in FORBIDDEN_LEAVES and not leaf.startswith("test_"):
        return False
    relative = Path(*module.split("."))
    return any((base / relative).with_suffix(".py").is_file() for base in (TESTS, ROOT / "bench"))


def test_no_module_imports_a_conftest_or_a_test_module() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted([*TESTS.rglob("*.py"), *(ROOT / "bench").rglob("*.py")])
        for module in imported_modules(path)
        if is_test_or_conftest(module)
    ]
    assert not offenders, "move what they import into tests/support:\n" + "\n".join(offenders)


def test_the_check_sees_both_kinds_of_import(tmp_path: Path) -> None:
    """The detector itself: a conftest import and a test-module import are both found."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from gateway.conftest import x\nimport claimer.test_claimer_grpc\nfrom support import s3\n"
    )
    found = [m for m in imported_modules(sample) if is_test_or_conftest(m)]
    assert found == ["gateway.conftest", "claimer.test_claimer_grpc"]


def test_no_test_directory_hides_the_support_package() -> None:
    """pytest puts a test's own directory first on ``sys.path``: a ``support.py`` or
    ``support/`` there would be imported instead of ``tests/support``."""
    shadows = [
        str(path.relative_to(ROOT))
        for path in sorted(TESTS.rglob("support*"))
        if path.name in ("support", "support.py") and path != TESTS / "support"
    ]
    assert not shadows, f"rename these helper modules after what they hold: {shadows}"
