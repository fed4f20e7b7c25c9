"""The architecture as a contract: the import-linter contracts of ``.importlinter`` hold.

Services never import each other, the dev stack or the CLI; no package has an import cycle
between its modules; no service's cores import ``grpc`` (only the transport modules each
contract lists, each with its reason); the claimer and the gateway are layered (main, then the
transport, then the cores, each importing only lower layers). A failure prints import-linter's
report, which names each broken contract and the imports that break it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter.api import read_configuration
from importlinter.cli import lint_imports

CONFIG = Path(__file__).resolve().parent.parent / ".importlinter"


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
