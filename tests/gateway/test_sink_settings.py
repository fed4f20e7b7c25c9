"""Sink settings, the factory and the pool."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fakes.turbopuffer import FakeTurbopufferThread

from hevlayer.common.config import ConfigError, describe_settings, load_settings
from hevlayer.gateway.sinks import DistanceMetric, Row, SinkKind, SinkPool, SinkSettings, open_sink
from hevlayer.gateway.sinks.milvus import MilvusSink
from hevlayer.gateway.sinks.turbopuffer import TurbopufferSink


def test_defaults_select_milvus_lite() -> None:
    settings = load_settings(SinkSettings, environ={})
    assert settings.default_sink is SinkKind.MILVUS_LITE
    assert settings.milvus_lite_path == "hevlayer-vectors.db"
    assert settings.timeout_seconds == 30.0


def test_every_variable_is_documented() -> None:
    names = [row.env for row in describe_settings(SinkSettings)]
    assert names == [
        "GATEWAY_DEFAULT_SINK",
        "GATEWAY_MILVUS_LITE_PATH",
        "GATEWAY_MILVUS_URI",
        "GATEWAY_MILVUS_TOKEN",
        "GATEWAY_MILVUS_DB_NAME",
        "GATEWAY_TURBOPUFFER_API_KEY",
        "GATEWAY_TURBOPUFFER_REGION",
        "GATEWAY_TURBOPUFFER_BASE_URL",
        "GATEWAY_TURBOPUFFER_MAX_RETRIES",
        "GATEWAY_SINK_TIMEOUT_SECONDS",
    ]
    assert all(row.doc for row in describe_settings(SinkSettings))


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"GATEWAY_DEFAULT_SINK": "pinecone"}, "GATEWAY_DEFAULT_SINK"),
        ({"GATEWAY_MILVUS_LITE_PATH": "/data/vectors"}, "GATEWAY_MILVUS_LITE_PATH"),
        ({"GATEWAY_MILVUS_URI": "milvus:19530"}, "GATEWAY_MILVUS_URI"),
        ({"GATEWAY_DEFAULT_SINK": "milvus"}, "GATEWAY_MILVUS_URI"),
        ({"GATEWAY_DEFAULT_SINK": "turbopuffer"}, "GATEWAY_TURBOPUFFER_API_KEY"),
        (
            {"GATEWAY_DEFAULT_SINK": "turbopuffer", "GATEWAY_TURBOPUFFER_API_KEY": "k"},
            "GATEWAY_TURBOPUFFER_REGION",
        ),
        (
            {
                "GATEWAY_TURBOPUFFER_REGION": "gcp-us-central1",
                "GATEWAY_TURBOPUFFER_BASE_URL": "https://x.example",
            },
            "GATEWAY_TURBOPUFFER_REGION",
        ),
        ({"GATEWAY_TURBOPUFFER_BASE_URL": "x.example"}, "GATEWAY_TURBOPUFFER_BASE_URL"),
        ({"GATEWAY_TURBOPUFFER_MAX_RETRIES": "-1"}, "GATEWAY_TURBOPUFFER_MAX_RETRIES"),
        ({"GATEWAY_SINK_TIMEOUT_SECONDS": "0"}, "GATEWAY_SINK_TIMEOUT_SECONDS"),
    ],
)
def test_invalid_settings_name_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}:"):
        load_settings(SinkSettings, environ=environ)


def test_valid_remote_settings() -> None:
    settings = load_settings(
        SinkSettings,
        environ={
            "GATEWAY_DEFAULT_SINK": "turbopuffer",
            "GATEWAY_TURBOPUFFER_API_KEY": "tpuf_secret",
            "GATEWAY_TURBOPUFFER_REGION": "gcp-us-central1",
            "GATEWAY_MILVUS_URI": "https://in03.example.zillizcloud.com:443",
            "GATEWAY_MILVUS_TOKEN": "db_admin:secret",
        },
    )
    assert settings.default_sink is SinkKind.TURBOPUFFER
    settings.validate_for(SinkKind.MILVUS)
    assert "secret" not in repr(settings)
    assert "***" in repr(settings)


async def test_open_sink_opens_each_kind(tmp_path: Path, turbopuffer_server: FakeTurbopufferThread) -> None:
    settings = SinkSettings(
        milvus_lite_path=str(tmp_path / "vectors.db"),
        turbopuffer_api_key=turbopuffer_server.fake.api_key,
        turbopuffer_base_url=turbopuffer_server.fake.base_url,
    )
    lite = await open_sink(None, settings)
    puffer = await open_sink(SinkKind.TURBOPUFFER, settings)
    try:
        assert isinstance(lite, MilvusSink)
        assert lite.kind is SinkKind.MILVUS_LITE
        assert isinstance(puffer, TurbopufferSink)
        for sink in (lite, puffer):
            await sink.ensure_namespace("factory", 2, DistanceMetric.COSINE_DISTANCE)
            assert await sink.replace_documents("factory", {"d": [Row("c", [1.0, 0.0])]}) == 1
            await sink.drop_namespace("factory")
    finally:
        await lite.close()
        await puffer.close()
    with pytest.raises(ConfigError, match=r"^GATEWAY_MILVUS_URI:"):
        await open_sink(SinkKind.MILVUS, settings)


async def test_the_pool_opens_a_kind_once(tmp_path: Path) -> None:
    pool = SinkPool(SinkSettings(milvus_lite_path=str(tmp_path / "pool.db")))
    try:
        first = await pool.get()
        assert await pool.get(SinkKind.MILVUS_LITE) is first
    finally:
        await pool.close()
