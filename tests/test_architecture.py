"""The architecture as a contract: the import-linter contracts of ``.importlinter`` hold.

Services never import each other, the dev stack or the CLI; no package has an import cycle
between its modules; no service's cores import ``grpc`` (only the transport modules each
contract lists, each with its reason); the claimer and the gateway are layered (main, then the
transport, then the cores, each importing only lower layers). A failure prints import-linter's
report, which names each broken contract and the imports that break it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from importlinter.api import read_configuration
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".importlinter"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
SECTIONS = {
    "gateway": "## The gateway",
    "claimer": "## The claimer",
    "embedder": "## The embedder",
    "summarizer": "## The summarizer",
    "operator": "## The operator",
    "extractor": "## The extract worker",
}
"""Each service's section of docs/architecture.md, by its heading."""


def contract_ids() -> list[str]:
    """The ids of the contracts in ``.importlinter``."""
    options = read_configuration(str(CONFIG))["contracts_options"]
    return [str(contract["id"]) for contract in options]


def test_the_contracts_cover_the_rules_of_issue_19() -> None:
    assert set(contract_ids()) >= {
        "services-independent",
        "services-without-dev-tooling",
        "no-cycles",
        "claimer-cores-without-grpc",
        "gateway-cores-without-grpc",
        "embedder-cores-without-grpc",
        "summarizer-cores-without-grpc",
        "operator-cores-without-grpc",
        "extractor-without-grpc",
        "claimer-layers",
        "gateway-layers",
    }


def test_the_contracts_are_kept(capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = lint_imports(config_filenames=(str(CONFIG),), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert exit_code == 0, report


def section(text: str, heading: str) -> str:
    """The part of ``text`` under ``heading``, up to the next ``## `` heading."""
    start = text.index(heading + "\n")
    following = re.search(r"^## ", text[start + len(heading) :], re.MULTILINE)
    return text[start : start + len(heading) + following.start()] if following else text[start:]


def test_the_architecture_page_names_every_contract_and_every_module() -> None:
    """docs/architecture.md stays the map of the code: each contract is named, and each
    service's section names every module of that service (a new module shows up here)."""
    text = ARCHITECTURE.read_text()
    missing = [f"contract {cid}" for cid in contract_ids() if f"`{cid}`" not in text]
    for service, heading in SECTIONS.items():
        package = ROOT / "services" / service / "src" / "hevlayer" / service
        assert package.is_dir(), package
        part = section(text, heading)
        for module in sorted(package.rglob("*.py")):
            relative = module.relative_to(package).as_posix()
            if module.name != "__init__.py" and f"`{relative}`" not in part:
                missing.append(f"{service}: {relative}")
    assert missing == [], f"docs/architecture.md does not name: {missing}"
