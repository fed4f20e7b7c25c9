"""hevlayer.client.methods and options: every RPC is listed once, and only idempotent ones are retried."""

from __future__ import annotations

import json

import pytest

from hevlayer.api.auth.v1 import auth_pb2
from hevlayer.api.claimer.v1 import document_state_pb2, token_verification_pb2
from hevlayer.api.embedding.v1 import embedding_pb2
from hevlayer.api.index.v1 import index_pb2
from hevlayer.api.lease.v1 import lease_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.api.summary.v1 import summary_pb2
from hevlayer.client.methods import BY_NAME, METHODS
from hevlayer.client.options import ClientOptions, RetryPolicy

MODULES = [
    pipeline_pb2,
    staging_pb2,
    lease_pb2,
    index_pb2,
    embedding_pb2,
    summary_pb2,
    auth_pb2,
    document_state_pb2,
    token_verification_pb2,
]


def test_every_rpc_of_every_service_is_listed_once() -> None:
    rpcs = {
        f"/{service.full_name}/{m.name}"
        for module in MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    }
    assert len(METHODS) == len(BY_NAME)
    assert set(BY_NAME) == rpcs


@pytest.mark.parametrize(
    "name",
    [
        "CreatePipeline",
        "DeletePipeline",
        "StageDocuments",
        "EnqueueDocuments",
        "DeleteDocuments",
        "ClaimDocuments",
        "TransitionDocuments",
        "StreamLeases",
        "WriteVectors",
        "SubmitJob",
        "RecordStaged",
        "ForgetDocuments",
        "EnqueueIds",
    ],
)
def test_calls_that_change_state_unrepeatably_are_not_retried(name: str) -> None:
    config = json.loads(ClientOptions().service_config())
    retried = {(n["service"], n["method"]) for n in config["methodConfig"][0]["name"]}
    method = next(m for m in METHODS if m.name == name)
    assert not method.idempotent
    assert (method.service, method.name) not in retried


def test_the_service_config_retries_exactly_the_idempotent_methods() -> None:
    config = json.loads(ClientOptions(retry=RetryPolicy(max_attempts=3)).service_config())
    (entry,) = config["methodConfig"]
    assert {(n["service"], n["method"]) for n in entry["name"]} == {
        (m.service, m.name) for m in METHODS if m.idempotent
    }
    assert entry["retryPolicy"]["maxAttempts"] == 3
    assert entry["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "ABORTED"]


def test_deadlines_come_from_the_options_then_the_method() -> None:
    query = BY_NAME["/hevlayer.api.index.v1.IndexService/Query"]
    watch = BY_NAME["/hevlayer.api.pipeline.v1.PipelineService/WatchPipelineStatus"]
    assert ClientOptions().timeout(query) == 60.0
    assert ClientOptions(timeouts={"Query": 5.0}).timeout(query) == 5.0
    assert ClientOptions(timeouts={query.full_name: 7.0, "Query": 5.0}).timeout(query) == 7.0
    assert ClientOptions().timeout(watch) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 6}, "max_attempts"),
        ({"initial_backoff": 0}, "initial_backoff"),
        ({"initial_backoff": 2.0, "max_backoff": 1.0}, "initial_backoff"),
        ({"codes": ("UNAVAILABLE", "NOPE")}, "NOPE"),
    ],
)
def test_a_bad_retry_policy_is_refused_naming_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
