"""Where test helpers live: one home, ``tests/support``, and nothing imported from a test.

- A test module imports helpers, never a conftest or another test module. A conftest holds
  fixtures, which pytest finds by name; importing one runs it twice (once as pytest's plugin,
  once as a module) and hides where a helper comes from.
- A helper used by more than one test directory lives in ``tests/support`` (fakes of services
  that cannot run here, or of faults a real service cannot be made to produce, in
  ``tests/support/fakes``). A helper of one directory's tests may stay next to them, named
  after what it holds: never ``helpers``, ``utils``, ``fakes``/``fake_*`` or ``*support*``.
- A bench script imports the shared helper instead of copying it: no top-level function or
  class of six lines or more of bench/ is the same as one of tests/ or of another bench script
  (bench scripts import each other, e.g. ``from memory import make_run_corpus``). A bench
  script that imports ``support`` puts ``tests/`` on ``sys.path`` first: bench scripts run as
  ``.venv/bin/python bench/X.py``, outside pytest's ``pythonpath``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
BENCH = ROOT / "bench"
SUPPORT = TESTS / "support"
FORBIDDEN_LEAVES = ("conftest",)
VAGUE_NAME = re.compile(r"^(helpers?|utils?|common|fakes|fake_.*|.*support.*)$")
MIN_COPY_LINES = 6


def python_files(*roots: Path) -> list[Path]:
    return sorted(path for root in roots for path in root.rglob("*.py"))


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


def module_file(module: str, bases: Iterable[Path] = (TESTS, BENCH)) -> Path | None:
    """The file under tests/ or bench/ that ``module`` names, if any."""
    relative = Path(*module.split("."))
    for base in bases:
        if (base / relative).with_suffix(".py").is_file():
            return (base / relative).with_suffix(".py")
    return None


def is_test_or_conftest(module: str) -> bool:
    """Whether ``module`` names a conftest or a ``test_*`` module under tests/ or bench/."""
    leaf = module.rsplit(".", 1)[-1]
    if leaf not in FORBIDDEN_LEAVES and not leaf.startswith("test_"):
        return False
    return module_file(module) is not None


def is_local_helper(path: Path) -> bool:
    """A helper module of one test directory: under tests/<dir>/, outside tests/support, neither a
    test module nor a conftest."""
    return (
        path.is_relative_to(TESTS)
        and not path.is_relative_to(SUPPORT)
        and path.parent != TESTS
        and not path.name.startswith("test_")
        and path.name not in ("conftest.py", "__init__.py")
    )


def foreign_helper_imports(path: Path, directory: Path | None = None) -> Iterator[str]:
    """The helper modules of another test directory than ``directory`` (``path``'s own by
    default) that ``path`` imports."""
    for module in imported_modules(path):
        target = module_file(module, (TESTS,))
        if target is not None and is_local_helper(target) and target.parent != (directory or path.parent):
            yield module


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def vague_names(paths: Iterable[Path]) -> list[str]:
    """Modules and packages outside tests/support whose names say nothing of what they hold."""
    found: set[str] = set()
    for path in paths:
        if path.is_relative_to(SUPPORT):
            continue
        relative = path.relative_to(TESTS)
        for part in [*relative.parts[:-1], path.stem]:
            if VAGUE_NAME.match(part) and not part.startswith("test_"):
                found.add(str(relative))
    return sorted(found)


def definitions(path: Path) -> Iterator[tuple[str, int, str]]:
    """(name, line, normalized code) of each top-level function and class of ``path`` of at least
    ``MIN_COPY_LINES`` lines; docstrings do not count."""
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        assert node.end_lineno is not None
        if node.end_lineno - node.lineno + 1 < MIN_COPY_LINES:
            continue
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        copy = type(node)(**{**{f: getattr(node, f) for f in node._fields}, "body": body})
        yield node.name, node.lineno, ast.dump(copy, annotate_fields=False)


def copied_definitions(bench_files: Iterable[Path], test_files: Iterable[Path]) -> list[str]:
    """Each top-level definition of a bench script that stands, the same, in a test file or in
    another bench script."""
    bench_files = list(bench_files)
    known: dict[str, list[str]] = {}
    for path in [*test_files, *bench_files]:
        for name, line, code in definitions(path):
            known.setdefault(code, []).append(f"{shown(path)}:{line} ({name})")
    return [
        f"{place} copies {other}"
        for path in bench_files
        for name, line, code in definitions(path)
        for place in [f"{shown(path)}:{line} ({name})"]
        for other in known[code]
        if other != place
    ]


def support_import_before_path(path: Path) -> int | None:
    """The line of ``path``'s first ``support`` import when no ``sys.path.insert(... "tests")``
    comes before it (None when the order is right or nothing imports ``support``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    inserted = False
    for node in tree.body:
        if (
            isinstance(node, ast.Expr)
            and "sys.path.insert" in ast.unparse(node)
            and "'tests'" in ast.unparse(node)
        ):
            inserted = True
        modules = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
        if any(m == "support" or m.startswith("support.") for m in modules) and not inserted:
            return node.lineno
    return None


def test_no_module_imports_a_conftest_or_a_test_module() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in python_files(TESTS, BENCH)
        for module in imported_modules(path)
        if is_test_or_conftest(module)
    ]
    assert not offenders, "move what they import into tests/support:\n" + "\n".join(offenders)


def test_helpers_shared_across_directories_live_in_support() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in python_files(TESTS)
        for module in foreign_helper_imports(path)
    ]
    assert not offenders, "move these helpers into tests/support:\n" + "\n".join(offenders)


def test_helper_modules_are_named_after_what_they_hold() -> None:
    offenders = vague_names(python_files(TESTS))
    assert not offenders, f"name these after what they hold (fakes go to tests/support/fakes): {offenders}"


def test_bench_scripts_import_test_helpers_instead_of_copying_them() -> None:
    copies = copied_definitions(python_files(BENCH), python_files(TESTS))
    assert not copies, "import the helper from tests/support instead:\n" + "\n".join(copies)


def test_bench_scripts_put_tests_on_the_path_before_importing_support() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in python_files(BENCH)
        if (line := support_import_before_path(path)) is not None
    ]
    assert not offenders, (
        'add sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests")) before: '
        + ", ".join(offenders)
    )


def test_no_test_directory_hides_the_support_package() -> None:
    """pytest puts a test's own directory first on ``sys.path``: a ``support.py`` or
    ``support/`` there would be imported instead of ``tests/support``."""
    shadows = [
        str(path.relative_to(ROOT))
        for path in sorted(TESTS.rglob("support*"))
        if path.name in ("support", "support.py") and path != SUPPORT
    ]
    assert not shadows, f"rename these helper modules after what they hold: {shadows}"


# -- the detectors themselves: each finds what it is for -------------------------------------------


def test_the_check_sees_both_kinds_of_import(tmp_path: Path) -> None:
    """A conftest import and a test-module import are both found."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from gateway.conftest import x\nimport claimer.test_claimer_grpc\nfrom support import s3\n"
    )
    found = [m for m in imported_modules(sample) if is_test_or_conftest(m)]
    assert found == ["gateway.conftest", "claimer.test_claimer_grpc"]


def test_the_check_sees_a_helper_of_another_directory(tmp_path: Path) -> None:
    """claimer/stores.py helps the claimer tests, gateway/auth_stack.py the gateway tests: each
    directory may import its own, not the other's; tests/support is everyone's."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from claimer.stores import Stores\n"
        "import gateway.auth_stack\n"
        "from support.stacks import start_stack\n"
    )
    assert list(foreign_helper_imports(sample, TESTS / "gateway")) == ["claimer.stores"]
    assert list(foreign_helper_imports(sample, TESTS / "claimer")) == ["gateway.auth_stack"]
    assert not is_local_helper(SUPPORT / "stacks.py")
    assert not is_local_helper(TESTS / "claimer" / "conftest.py")


def test_the_check_sees_vague_names() -> None:
    paths = [
        TESTS / "gateway" / "helpers.py",
        TESTS / "embedder" / "worker_support.py",
        TESTS / "summarizer" / "fakes.py",
        TESTS / "fakes" / "turbopuffer_server.py",
        TESTS / "ingest" / "fake_vision.py",
        TESTS / "claimer" / "stores.py",
        TESTS / "gateway" / "test_fakes.py",
        SUPPORT / "fakes" / "llm.py",
    ]
    assert vague_names(paths) == [
        "embedder/worker_support.py",
        "fakes/turbopuffer_server.py",
        "gateway/helpers.py",
        "ingest/fake_vision.py",
        "summarizer/fakes.py",
    ]


def test_the_check_sees_a_copied_definition(tmp_path: Path) -> None:
    body = (
        "def unique(prefix: str) -> str:\n"
        + "".join(f"    x{i} = {i}\n" for i in range(5))
        + "    return prefix\n"
    )
    helper, copy, other = tmp_path / "helper.py", tmp_path / "copy.py", tmp_path / "other.py"
    helper.write_text(body)
    copy.write_text("import os\n\n\n" + body.replace("-> str:\n", '-> str:\n    """Documented."""\n', 1))
    other.write_text(body.replace("x4 = 4", "x4 = 5"))
    found = [row.split(" copies ")[0].split(":")[0] for row in copied_definitions([copy, other], [helper])]
    assert [Path(p).name for p in found] == ["copy.py"]
    # between two bench scripts too, each side named
    twin = tmp_path / "twin.py"
    twin.write_text(body)
    found = [row.split(" copies ")[0].split(":")[0] for row in copied_definitions([copy, twin], [])]
    assert sorted(Path(p).name for p in found) == ["copy.py", "twin.py"]


def test_the_check_sees_support_imported_before_the_path(tmp_path: Path) -> None:
    late, right, none = tmp_path / "late.py", tmp_path / "right.py", tmp_path / "none.py"
    insert = 'sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))\n'
    late.write_text(f"import sys\nfrom support.s3 import x\n{insert}")
    right.write_text(f"import sys\n{insert}from support.s3 import x\n")
    none.write_text("import sys\n")
    assert [support_import_before_path(p) for p in (late, right, none)] == [2, None, None]
