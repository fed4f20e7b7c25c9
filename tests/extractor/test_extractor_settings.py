"""The extract worker's settings: defaults, and errors that name the variable."""

from __future__ import annotations

import pytest

from hevlayer.common.config import ConfigError, load_settings
from hevlayer.extractor.settings import ExtractorS3Settings, ExtractorSettings
from hevlayer.ingest.producers import DEFAULT_BUDGET


def test_defaults_work_every_pipeline_with_the_cli_budget() -> None:
    settings = load_settings(ExtractorSettings, environ={"EXTRACTOR_GATEWAY_ADDRESS": "gw:50051"})
    assert settings.all_pipelines
    assert settings.gateway == "gw:50051"
    assert (settings.budget().max_tokens, settings.budget().overlap_tokens, settings.budget().max_chars) == (
        256,
        28,
        2560,
    )
    assert settings.budget() == DEFAULT_BUDGET, "hevlayer add's defaults, in the model's tokens"
    operator = load_settings(
        ExtractorSettings, environ={"HEVLAYER_GATEWAY_ADDRESS": "gw:1", "HEVLAYER_PIPELINE_ID": "docs"}
    )
    assert (operator.gateway, operator.pipeline_ids, operator.all_pipelines) == ("gw:1", ("docs",), False)
    named = load_settings(
        ExtractorSettings,
        environ={
            "EXTRACTOR_GATEWAY_ADDRESS": "gw:1",
            "EXTRACTOR_PIPELINES": "a,b",
            "HEVLAYER_PIPELINE_ID": "c",
        },
    )
    assert named.pipeline_ids == ("a", "b")


def test_excluded_pipelines() -> None:
    settings = load_settings(
        ExtractorSettings,
        environ={"EXTRACTOR_GATEWAY_ADDRESS": "gw:1", "EXTRACTOR_EXCLUDE_PIPELINES": "local-*,other"},
    )
    assert [settings.works(p) for p in ("local-a", "other", "docs")] == [False, False, True]


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({}, "EXTRACTOR_GATEWAY_ADDRESS"),
        ({"EXTRACTOR_GATEWAY_ADDRESS": "nope"}, "EXTRACTOR_GATEWAY_ADDRESS"),
        ({"EXTRACTOR_PIPELINES": "*,docs"}, "EXTRACTOR_PIPELINES"),
        ({"EXTRACTOR_PIPELINES": "Bad_Id"}, "EXTRACTOR_PIPELINES"),
        ({"EXTRACTOR_EXCLUDE_PIPELINES": "*x"}, "EXTRACTOR_EXCLUDE_PIPELINES"),
        ({"EXTRACTOR_CONCURRENCY": "0"}, "EXTRACTOR_CONCURRENCY"),
        ({"EXTRACTOR_LEASE_SECONDS": "0"}, "EXTRACTOR_LEASE_SECONDS"),
        ({"EXTRACTOR_CHUNK_OVERLAP_TOKENS": "256"}, "EXTRACTOR_CHUNK_OVERLAP_TOKENS"),
        ({"EXTRACTOR_ARTIFACT_CACHE": "s3:///prefix"}, "EXTRACTOR_ARTIFACT_CACHE"),
        ({"EXTRACTOR_ARTIFACT_CACHE_BYTES": "-1"}, "EXTRACTOR_ARTIFACT_CACHE_BYTES"),
        ({"EXTRACTOR_POLL_SECONDS": "0"}, "EXTRACTOR_POLL_SECONDS"),
        ({"HEVLAYER_PIPELINE_ID": "Nope"}, "HEVLAYER_PIPELINE_ID"),
    ],
)
def test_a_bad_value_names_its_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{variable}:"):
        load_settings(
            ExtractorSettings, environ={"EXTRACTOR_GATEWAY_ADDRESS": "gw:1", **environ} if environ else {}
        )


def test_s3_settings() -> None:
    with pytest.raises(ConfigError, match=r"^EXTRACTOR_S3_SECRET_ACCESS_KEY:"):
        load_settings(ExtractorS3Settings, environ={"EXTRACTOR_S3_ACCESS_KEY_ID": "k"})
    with pytest.raises(ConfigError, match=r"^EXTRACTOR_S3_ENDPOINT_URL:"):
        load_settings(ExtractorS3Settings, environ={"EXTRACTOR_S3_ENDPOINT_URL": "ftp://x"})
    settings = load_settings(
        ExtractorS3Settings,
        environ={"EXTRACTOR_S3_ACCESS_KEY_ID": "k", "EXTRACTOR_S3_SECRET_ACCESS_KEY": "s3cr3t"},
    )
    assert "s3cr3t" not in repr(settings)
    assert "s3cr3t" not in repr(settings.connection())
