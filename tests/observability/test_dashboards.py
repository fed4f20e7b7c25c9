"""The Grafana dashboard and the Prometheus alerting rules in deploy/, checked three ways.

1. Structure: the dashboard against a JSON schema of what Grafana needs (panels with unique ids
   and a place on the grid, Prometheus targets through the ``${datasource}`` variable, the
   ``datasource`` and ``pipeline`` variables), the rule files against the conventions of the
   alerts (severity, summary, description), the PrometheusRule equal to the plain rule file.
2. Syntax and behaviour with the real ``promtool`` (``make system-deps`` provides it):
   ``check rules`` on the rules and on every dashboard expression (as recording rules),
   ``test rules`` on deploy/prometheus/hevlayer-rules.test.yaml.
3. Every metric an expression reads is served by a live suite (``live_suite``), after a
   little traffic: the labels it matches on exist, and equality matchers find their value.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from observability.promql import Matcher, Selector, metric_names, selectors
from prometheus_client.parser import text_string_to_metric_families

from hevlayer.operator import prometheus_query

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "hevlayer.json"
RULES = ROOT / "deploy" / "prometheus" / "hevlayer-rules.yaml"
RULES_TESTS = ROOT / "deploy" / "prometheus" / "hevlayer-rules.test.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "prometheus" / "hevlayer-prometheusrule.yaml"
PROMTOOL_IN_TOOLS = ROOT / ".tools" / "prometheus" / "promtool"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's interval variables, as a duration promtool accepts.
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
# Series Prometheus makes itself for every scrape target, not served on any /metrics.
SYNTHETIC = frozenset({"up"})

# The panels the dashboard must have, and a metric each must read.
REQUIRED_PANELS = {
    "Ingest rate": {"layer_transitions_total", "hevlayer_embedder_worker_chunks_embedded_total"},
    "Pending per pipeline (KEDA signal)": {"layer_pipeline_stage_count"},
    "Lease expiries": {"layer_lease_expiries_total"},
    "Embed batch size (chunks per flush)": {"hevlayer_embedder_worker_flush_chunks_bucket"},
    "Triton latency": {"hevlayer_embedder_triton_request_seconds_bucket"},
    "Chunk cache hit ratio": {"hevlayer_gateway_chunk_cache_lookups_total"},
    "Sink errors": {"hevlayer_gateway_sink_errors_total"},
}
REQUIRED_ALERTS = {
    "HevlayerPendingWithoutWorker",
    "HevlayerLeaseExpiriesSpiking",
    "HevlayerSinkErrors",
    "HevlayerServiceDown",
}

_GRID = {
    "type": "object",
    "required": ["x", "y", "w", "h"],
    "properties": {
        "x": {"type": "integer", "minimum": 0, "maximum": 23},
        "y": {"type": "integer", "minimum": 0},
        "w": {"type": "integer", "minimum": 1, "maximum": 24},
        "h": {"type": "integer", "minimum": 1},
    },
}
_DATASOURCE_REF = {
    "type": "object",
    "required": ["type", "uid"],
    "properties": {"type": {"const": "prometheus"}, "uid": {"const": "${datasource}"}},
}
DASHBOARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "tags": {"type": "array", "items": {"type": "string"}},
        "time": {
            "type": "object",
            "required": ["from", "to"],
            "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
        },
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "type"],
                        "properties": {
                            "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                            "type": {"enum": ["datasource", "query", "custom", "constant", "interval"]},
                        },
                    },
                    "allOf": [
                        {
                            "contains": {
                                "type": "object",
                                "required": ["name", "type", "query"],
                                "properties": {
                                    "name": {"const": "datasource"},
                                    "type": {"const": "datasource"},
                                    "query": {"const": "prometheus"},
                                },
                            }
                        },
                        {
                            "contains": {
                                "type": "object",
                                "required": ["name", "type", "datasource", "definition", "query"],
                                "properties": {
                                    "name": {"const": "pipeline"},
                                    "type": {"const": "query"},
                                    "datasource": _DATASOURCE_REF,
                                    "definition": {"type": "string", "pattern": r"^label_values\(.+\)$"},
                                    "query": {
                                        "type": "object",
                                        "required": ["query"],
                                        "properties": {
                                            "query": {"type": "string", "pattern": r"^label_values\(.+\)$"}
                                        },
                                    },
                                },
                            }
                        },
                    ],
                }
            },
        },
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos", "datasource", "targets"],
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "type": {"enum": ["timeseries", "stat", "gauge", "bargauge", "table", "heatmap"]},
                    "title": {"type": "string", "minLength": 1},
                    "description": {"type": "string"},
                    "gridPos": _GRID,
                    "datasource": _DATASOURCE_REF,
                    "fieldConfig": {
                        "type": "object",
                        "required": ["defaults", "overrides"],
                        "properties": {"overrides": {"type": "array"}},
                    },
                    "targets": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["refId", "expr", "datasource"],
                            "properties": {
                                "refId": {"type": "string", "pattern": "^[A-Z]$"},
                                "expr": {"type": "string", "minLength": 1},
                                "legendFormat": {"type": "string"},
                                "datasource": _DATASOURCE_REF,
                            },
                        },
                    },
                },
            },
        },
    },
}

RULES_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "rules"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "rules": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["alert", "expr", "labels", "annotations"],
                            "additionalProperties": False,
                            "properties": {
                                "alert": {"type": "string", "pattern": "^Hevlayer[A-Za-z]+$"},
                                "expr": {"type": "string", "minLength": 1},
                                "for": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                                "labels": {
                                    "type": "object",
                                    "required": ["severity"],
                                    "properties": {"severity": {"enum": ["critical", "warning", "info"]}},
                                },
                                "annotations": {
                                    "type": "object",
                                    "required": ["summary", "description"],
                                    "properties": {
                                        "summary": {"type": "string", "minLength": 1},
                                        "description": {"type": "string", "minLength": 1},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}


# -- helpers -----------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def rules() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return loaded


def panel_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every dashboard target."""
    return [
        (f"panel {panel['id']} {panel['title']!r} target {target['refId']}", target["expr"])
        for panel in dashboard()["panels"]
        for target in panel["targets"]
    ]


def rule_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every alerting rule."""
    return [(f"rule {rule['alert']}", rule["expr"]) for group in rules()["groups"] for rule in group["rules"]]


def template_variables() -> set[str]:
    return {variable["name"] for variable in dashboard()["templating"]["list"]}


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced: intervals by durations, template
    variables (used in regex matchers) by ``.*``; KeyError for an undefined variable."""
    for variable, duration in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, duration)
    defined = template_variables()

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in defined:
            raise KeyError(f"${name} is not a template variable of the dashboard")
        return ".*"

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", substitute, expr)


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if PROMTOOL_IN_TOOLS.is_file():
        return str(PROMTOOL_IN_TOOLS)
    pytest.fail(f"promtool is neither on PATH nor at {PROMTOOL_IN_TOOLS}: run `make system-deps`")


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


# -- the PromQL reader --------------------------------------------------------------------------


def test_selectors_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, job) (rate(a_bucket{stage="embed", job=~"x|y"}[5m])))'
        " / on (job) group_left (instance) b_total offset 1h"
        ' unless ignoring (le) {__name__="c", kind!="z"} > bool 2'
        ' or label_replace(d:recorded, "dst", "$1", "src", "(.*)") and sum without (up) (e[1h:1m])'
    )
    assert selectors(expr) == [
        Selector("a_bucket", (Matcher("stage", "=", "embed"), Matcher("job", "=~", "x|y"))),
        Selector("b_total"),
        Selector("c", (Matcher("kind", "!=", "z"),)),
        Selector("d:recorded"),
        Selector("e"),
    ]
    assert metric_names("time() - vector(1) * scalar(up)") == {"up"}
    assert metric_names("sum(rate(x_total[5m])) by (pipeline_id)") == {"x_total"}
    assert metric_names("(a > 1)\nand\n(b)\nunless on () (c)") == {"a", "b", "c"}
    with pytest.raises(ValueError, match="unknown function 'rat'"):
        selectors("rat(x_total[5m])")


# -- 1. structure --------------------------------------------------------------------------------


def test_the_dashboard_has_the_structure_grafana_needs() -> None:
    board = dashboard()
    jsonschema.validate(board, DASHBOARD_SCHEMA)
    panels = board["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {sorted(ids)}"
    names = [variable["name"] for variable in board["templating"]["list"]]
    assert len(names) == len(set(names)), f"template variables repeat: {names}"
    cells: dict[tuple[int, int], int] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['id']} gridPos runs past the 24 columns"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"panel {panel['id']} refIds repeat: {ref_ids}"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]} and {panel['id']} overlap at {(x, y)}"
                cells[(x, y)] = panel["id"]
    for where, expr in panel_exprs():
        try:
            as_promql(expr)
        except KeyError as exc:
            pytest.fail(f"{where}: {exc}")


def test_the_dashboard_has_the_panels_asked_for() -> None:
    by_title = {panel["title"]: panel for panel in dashboard()["panels"]}
    for title, wanted in REQUIRED_PANELS.items():
        assert title in by_title, f"no panel {title!r} (panels: {sorted(by_title)})"
        used = set().union(*(metric_names(target["expr"]) for target in by_title[title]["targets"]))
        assert wanted <= used, f"panel {title!r} reads {sorted(used)}, not {sorted(wanted - used)}"
    # the pending panel shows the series the operator's KEDA trigger queries
    pending = by_title["Pending per pipeline (KEDA signal)"]["targets"][0]["expr"]
    keda = selectors(prometheus_query("some-pipeline"))
    assert [s.metric for s in selectors(pending)] == [s.metric for s in keda]
    assert Matcher("stage", "=", "pending") in selectors(pending)[0].matchers
    assert Matcher("stage", "=", "pending") in keda[0].matchers
    pipeline = next(v for v in dashboard()["templating"]["list"] if v["name"] == "pipeline")
    assert pipeline["query"]["query"] == "label_values(layer_pipeline_stage_count, pipeline_id)"


def test_the_rule_files_follow_the_alert_conventions() -> None:
    plain = rules()
    jsonschema.validate(plain, RULES_SCHEMA)
    alerts = [rule["alert"] for group in plain["groups"] for rule in group["rules"]]
    assert len(alerts) == len(set(alerts)), f"alert names repeat: {alerts}"
    assert set(alerts) >= REQUIRED_ALERTS, f"missing alerts: {sorted(REQUIRED_ALERTS - set(alerts))}"
    wrapped = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (wrapped["apiVersion"], wrapped["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert wrapped["metadata"]["name"]
    assert wrapped["spec"]["groups"] == plain["groups"], (
        "hevlayer-prometheusrule.yaml spec.groups differ from hevlayer-rules.yaml groups"
    )


# -- 2. promtool ---------------------------------------------------------------------------------


def test_promtool_accepts_the_rules() -> None:
    checked = run_promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_alerts_fire_when_they_should_and_only_then() -> None:
    tested = run_promtool("test", "rules", str(RULES_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_parses_every_dashboard_expression(tmp_path: Path) -> None:
    recorded = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr_{index}", "expr": as_promql(expr)}
                    for index, (_, expr) in enumerate(panel_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(recorded))
    checked = run_promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # a broken expression is refused, so the check above means something
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(("}]}]})
    )
    assert run_promtool("check", "rules", str(path)).returncode != 0


# -- 3. the metrics exist on a live suite ----------------------------------------------------------


def hevlayer(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hevlayer.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def scrape(address: str, path: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(sample name, labels) of every sample at ``http://address/path``."""
    with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, dict(sample.labels)


def live_series(http: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """Sample name -> label sets, over every hevlayer service's /metrics and the gateway's
    /v2/metrics (the stage counts KEDA reads). Triton's HTTP address serves its inference API,
    not hevlayer metrics."""
    series: dict[str, list[dict[str, str]]] = defaultdict(list)
    for service, address in sorted(http.items()):
        if service == "triton":
            continue
        paths = ["/metrics", "/v2/metrics"] if service == "gateway" else ["/metrics"]
        for path in paths:
            for name, labels in scrape(address, path):
                series[name].append(labels)
    return series


def problems(selector: Selector, series: dict[str, list[dict[str, str]]]) -> list[str]:
    """What the live series lack for ``selector``: the metric, a label, a matched value."""
    if selector.metric not in series:
        return [f"{selector.metric} is not served"]
    found: list[str] = []
    label_sets = series[selector.metric]
    for matcher in selector.matchers:
        if not any(matcher.label in labels for labels in label_sets):
            found.append(f"{selector.metric} has no label {matcher.label!r}")
        elif matcher.op == "=" and not any(
            labels.get(matcher.label) == matcher.value for labels in label_sets
        ):
            found.append(f'{selector.metric} has no series with {matcher.label}="{matcher.value}"')
    return found


def test_every_metric_used_is_served_by_the_live_suite(live_suite: Any, tmp_path: Path) -> None:
    exprs = [(where, as_promql(expr)) for where, expr in panel_exprs()] + rule_exprs()
    used = [(where, selector) for where, expr in exprs for selector in selectors(expr)]
    assert {s.metric for _, s in used if s.metric not in SYNTHETIC}, "no metric found in the expressions"
    assert {s.metric for _, s in used} & SYNTHETIC == {"up"}, "the service-down alert reads up"

    # traffic: a pipeline with two documents staged, embedded and indexed, then a text query
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "cats.md").write_text("# Cats\n\nA cat sits on the mat. Cats like warm places.\n")
    (corpus / "dogs.txt").write_text("Dogs bark at the mailman every morning.\n")
    pipeline = f"dash-{uuid4().hex[:6]}"
    added = hevlayer("add", "-p", pipeline, "--plain", "--timeout", "240", str(corpus), env=live_suite.env)
    assert added.returncode == 0, added.stdout + added.stderr
    assert "2 indexed" in added.stdout, added.stdout
    searched = hevlayer("search", "-p", pipeline, "a kitten", env=live_suite.env)
    assert searched.returncode == 0, searched.stdout + searched.stderr
    assert "cats.md" in searched.stdout, searched.stdout

    # the claimer refreshes its stage counts every 2 s: look again until nothing is missing
    deadline = time.monotonic() + 60
    while True:
        series = live_series(live_suite.http)
        missing = sorted(
            {
                f"{where}: {problem}"
                for where, selector in used
                if selector.metric not in SYNTHETIC
                for problem in problems(selector, series)
            }
        )
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, "\n".join(missing)
    # and the traffic shows up in the series the dashboard filters by pipeline
    assert any(labels.get("pipeline_id") == pipeline for labels in series["layer_pipeline_stage_count"])
