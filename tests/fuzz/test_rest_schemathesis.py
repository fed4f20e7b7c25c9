"""schemathesis against docs/openapi.yaml and the live gateway's REST routes.

Every operation of the published document is called with requests generated from its schema
(positive and negative). Checks: no 5xx answer (``not_a_server_error``), every answer's body
conforms to the schema the document gives for its status (``response_schema_conformance``) and has
a documented content type (``content_type_conformance``). Path parameters name a real pipeline
and document of the suite half the time, so that the routes run past the lookups.
``FUZZ_EXAMPLES`` sets the examples per operation; the run is derandomized unless ``FUZZ_SEED``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import schemathesis
from hypothesis import HealthCheck, seed, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from hevlayer.devstack.testing import LiveSuite

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
FUZZ_SEED = os.environ.get("FUZZ_SEED")

schema = schemathesis.openapi.from_path(SPEC)


def _send(method: str, base: str, path: str, body: dict[str, Any] | None) -> Any:
    request = urllib.request.Request(
        f"{base}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read() or b"null")


@pytest.fixture(scope="module")
def real_ids(live_suite: LiveSuite) -> dict[str, str]:
    """A pipeline of the suite (left to the test: no worker embeds it) with one staged document."""
    base = live_suite.gateway_http
    pipeline_id = f"{live_suite.external_prefix}rest-fuzz-{uuid4().hex[:6]}"
    _send("POST", base, "/v2/pipelines", {"id": pipeline_id})
    _send(
        "PUT",
        base,
        f"/v2/pipelines/{pipeline_id}/documents/doc-1",
        {"chunks": [{"id": "doc-1-0", "text": "hello"}]},
    )
    return {"pipeline_id": pipeline_id, "document_id": "doc-1"}


_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=FUZZ_SEED is None,
    suppress_health_check=list(HealthCheck),
    database=None,
    print_blob=True,
)


@schema.parametrize()
@_settings
def test_rest_routes_never_fail_on_generated_requests(
    case: schemathesis.Case[Any],
    live_suite: LiveSuite,
    real_ids: dict[str, str],
) -> None:
    if case.path_parameters:
        use_real = sum(map(ord, repr(case.body))) % 2 == 0
        if use_real:
            for name, value in real_ids.items():
                if name in case.path_parameters:
                    case.path_parameters[name] = value
    case.call_and_validate(
        base_url=live_suite.gateway_http,
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
        timeout=30,
    )


def _status(method: str, base: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    try:
        return 200, _send(method, base, path, body)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_attempts", 2**35), ("default_lease_seconds", 2**32), ("dimension", 2**40)],
)
def test_regression_an_integer_past_its_range_is_a_400_naming_it(
    live_suite: LiveSuite, field: str, value: int
) -> None:
    """Found by the fuzz: ``max_attempts`` above uint32 made POST /v2/pipelines answer 500."""
    base = live_suite.gateway_http
    pipeline_id = f"{live_suite.external_prefix}range-{uuid4().hex[:6]}"
    code, answer = _status("POST", base, "/v2/pipelines", {"id": pipeline_id, field: value})
    assert code == 400, answer
    assert [v["field"] for v in answer["error"]["field_violations"]] == [field], answer
    assert _status("GET", base, f"/v2/pipelines/{pipeline_id}/status")[0] == 404, "a refused create wrote"


if FUZZ_SEED is not None:
    test_rest_routes_never_fail_on_generated_requests = seed(int(FUZZ_SEED))(
        test_rest_routes_never_fail_on_generated_requests
    )
