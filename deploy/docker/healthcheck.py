#!/usr/bin/env python3
"""The HEALTHCHECK of the hevlayer images: exit 0 when the process in this container is healthy.

Copied into every image as ``/usr/local/bin/hevlayer-healthcheck`` and run with the image's
own Python, so it needs nothing but what the service's environment already has
(``grpcio`` and ``grpcio-health-checking``, dependencies of hevlayer-common); no
``grpc_health_probe`` binary.

    hevlayer-healthcheck
        gRPC ``grpc.health.v1.Health/Check`` (service "") on ``$HEVLAYER_GRPC_ADDRESS``: healthy
        when SERVING. A wildcard listen address (0.0.0.0, ::) is checked on loopback. A server
        with ``HEVLAYER_TLS_CERT`` speaks only TLS, for which this check holds no certificate the
        server's name would match: it is checked on its plaintext HTTP ``/readyz`` (on
        ``$HEVLAYER_HTTP_ADDRESS``; the same readiness) instead.
    hevlayer-healthcheck --http-env VARIABLE --path /healthz
        HTTP GET on the host:port in ``$VARIABLE`` (the operator: ``OPERATOR_HEALTH_ADDRESS``);
        healthy on a 2xx answer.
    hevlayer-healthcheck --http-address 127.0.0.1:8000 --path /v2/health/ready
        HTTP GET on a fixed address (Triton, whose image has no grpcio); standard library only.

Unhealthy: exit 1 with one line on stderr saying what was checked and what came back.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 3.0
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class Unhealthy(Exception):
    """The check failed; the message says why."""


def _split(address: str, variable: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise Unhealthy(f"{variable}: expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


def loopback_address(address: str, variable: str) -> str:
    """``address`` with a wildcard host replaced by loopback (IPv6 in brackets)."""
    host, port = _split(address, variable)
    host = _WILDCARDS.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_http(address: str, path: str) -> str:
    """GET ``http://address/path``; the status line when 2xx, else Unhealthy."""
    url = f"http://{address}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return f"GET {url}: {response.status}"
    except urllib.error.HTTPError as exc:
        raise Unhealthy(f"GET {url}: {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise Unhealthy(f"GET {url}: {getattr(exc, 'reason', exc)}") from None


def check_grpc(address: str) -> str:
    """``Health/Check`` on ``address`` in plaintext; the status when SERVING, else Unhealthy."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(address, options=options) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_SECONDS
            )
        except grpc.RpcError as exc:
            raise Unhealthy(f"gRPC health of {address}: {exc.code().name}") from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if status != "SERVING":
        raise Unhealthy(f"gRPC health of {address}: {status}")
    return f"gRPC health of {address}: {status}"


def check_service(environ: dict[str, str]) -> str:
    """The default check of a hevlayer service (see the module doc)."""
    grpc_address = environ.get("HEVLAYER_GRPC_ADDRESS", "")
    if not grpc_address:
        raise Unhealthy("HEVLAYER_GRPC_ADDRESS: not set (the images set it)")
    if environ.get("HEVLAYER_TLS_CERT"):
        http_address = environ.get("HEVLAYER_HTTP_ADDRESS", "")
        if not http_address:
            raise Unhealthy(
                "HEVLAYER_HTTP_ADDRESS: empty, and the gRPC server speaks TLS only (HEVLAYER_TLS_CERT): "
                "nothing this check can reach"
            )
        return check_http(loopback_address(http_address, "HEVLAYER_HTTP_ADDRESS"), "/readyz")
    return check_grpc(loopback_address(grpc_address, "HEVLAYER_GRPC_ADDRESS"))


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hevlayer-healthcheck", description=__doc__.split("\n")[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--http-env", metavar="VARIABLE", help="HTTP check of the host:port in VARIABLE")
    target.add_argument("--http-address", metavar="HOST:PORT", help="HTTP check of HOST:PORT")
    parser.add_argument("--path", default="/healthz", help="HTTP path (default /healthz)")
    args = parser.parse_args(argv)
    env = dict(os.environ if environ is None else environ)
    try:
        if args.http_env:
            address = env.get(args.http_env, "")
            if not address:
                raise Unhealthy(f"{args.http_env}: not set")
            result = check_http(loopback_address(address, args.http_env), args.path)
        elif args.http_address:
            result = check_http(loopback_address(args.http_address, "--http-address"), args.path)
        else:
            result = check_service(env)
    except Unhealthy as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
