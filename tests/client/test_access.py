"""The one table of who may call what (hevlayer.client.methods.ACCESS) is complete and sound."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor

import hevlayer.api
from hevlayer.client.methods import ACCESS, DOCUMENT_STATE_SERVICE, TOKEN_VERIFICATION_SERVICE
from hevlayer.common.auth import ADMIN, ROLES
from hevlayer.gateway.rest import RestApi


def every_service() -> list[ServiceDescriptor]:
    """Every service of every generated module under hevlayer.api (new protos included)."""
    services: list[ServiceDescriptor] = []
    for info in pkgutil.walk_packages(hevlayer.api.__path__, "hevlayer.api."):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(info.name)
            services.extend(module.DESCRIPTOR.services_by_name.values())
    return services


def every_method() -> list[str]:
    return [f"/{s.full_name}/{m.name}" for s in every_service() for m in s.methods]


def test_the_services_are_found() -> None:
    names = {s.full_name for s in every_service()}
    assert "hevlayer.api.auth.v1.TokenService" in names
    assert "hevlayer.api.pipeline.v1.PipelineService" in names
    assert len(names) >= 9


@pytest.mark.parametrize("method", every_method())
def test_every_method_of_every_service_has_an_access_entry(method: str) -> None:
    assert method in ACCESS, f"{method} has no entry in hevlayer.client.methods.ACCESS: it would ship open"


def test_no_entry_names_a_method_that_does_not_exist() -> None:
    assert set(ACCESS) == set(every_method())


def test_internal_services_are_internal_and_public_ones_are_not() -> None:
    for method, access in ACCESS.items():
        internal = method.startswith((f"/{DOCUMENT_STATE_SERVICE}/", f"/{TOKEN_VERIFICATION_SERVICE}/"))
        assert access.internal == internal, method
        assert access.roles <= set(ROLES) - {ADMIN}, method


def test_every_pipeline_field_exists_in_its_request() -> None:
    pool = descriptor_pool.Default()
    for method, access in ACCESS.items():
        if access.pipeline_field is None:
            continue
        service, _, name = method.lstrip("/").rpartition("/")
        message = pool.FindServiceByName(service).FindMethodByName(name).input_type
        *parents, leaf = access.pipeline_field.split(".")
        for part in parents:
            nested = message.fields_by_name[part].message_type
            assert nested is not None, (method, part)
            message = nested
        field = message.fields_by_name[leaf]
        assert field.type == field.TYPE_STRING, (method, access.pipeline_field)


def test_pipeline_management_and_tokens_are_admin_only() -> None:
    for method, access in ACCESS.items():
        name = method.rsplit("/", 1)[-1]
        if name in ("CreatePipeline", "UpdatePipeline", "DeletePipeline") or "TokenService" in method:
            assert access.roles == frozenset(), method


def test_every_rest_route_is_checked_or_open() -> None:
    from aiohttp import web

    from hevlayer.gateway.auth import OPEN_ROUTES

    checked = RestApi.access_routes()
    api = RestApi.__new__(RestApi)
    for route in api.routes():
        assert isinstance(route, web.RouteDef)
        key = (route.method, route.path)
        assert key in checked or route.path in OPEN_ROUTES, key
    for method in checked.values():
        assert method in ACCESS, method
        assert not ACCESS[method].internal


def test_docs_security_table_matches_the_access_table() -> None:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    table = text.split("<!-- access-table:", 1)[1].split("\n\n", 1)[0]
    documented: dict[str, tuple[frozenset[str], str | None]] = {}
    for row in table.splitlines()[3:]:
        method, roles, pipeline = (cell.strip().strip("`") for cell in row.strip("|").split("|"))
        if method.endswith("*`, `TokenVerificationService.VerifyToken"):
            continue
        names = frozenset() if roles == "-" else frozenset(r.strip() for r in roles.split(","))
        documented[method] = (names, None if pipeline in ("-", "answer filtered to the scope") else pipeline)
    expected = {
        method.split(".")[-1].replace("/", "."): (access.roles, access.pipeline_field)
        for method, access in ACCESS.items()
        if not access.internal
    }
    assert documented == expected
