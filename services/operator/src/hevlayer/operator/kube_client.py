"""A small Kubernetes API client for the objects the operator owns.

Kopf watches and patches Pipelines with its own client; the operator's
Deployments and ScaledObjects go through :class:`KubeClient`: plain aiohttp
requests (GET, POST, JSON merge-patch PATCH, DELETE) authenticated with the
same :class:`kopf.ConnectionInfo` that kopf's login handler returns
(:func:`login`). On 401 the credentials are reloaded once (service-account
tokens rotate).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import kopf
import yaml

from hevlayer.operator.render import creation_body, is_applied

log = logging.getLogger("hevlayer.operator.kube")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class LoginError(Exception):
    """No usable Kubernetes credentials were found."""


class KubeError(Exception):
    """A failed Kubernetes API request (``status`` is the HTTP status, 0 if none came back)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (server errors, throttling, no answer)."""
        return self.status == 0 or self.status in (409, 429) or self.status >= 500


class NotOwned(KubeError):
    """The object exists but another owner controls it: it is left alone."""

    def __init__(self, message: str) -> None:
        super().__init__(409, "NotOwned", message)

    @property
    def retryable(self) -> bool:
        return False


class Applied(enum.Enum):
    """What :meth:`KubeClient.apply` did."""

    CREATED = "created"
    PATCHED = "patched"
    UNCHANGED = "unchanged"


def _resolve(base: Path, value: Any) -> str | None:
    if not value:
        return None
    path = Path(os.path.expanduser(str(value)))
    return str(path if path.is_absolute() else base / path)


def connection_from_kubeconfig(path: str | os.PathLike[str]) -> kopf.ConnectionInfo:
    """The current context of a kubeconfig file as connection info.

    Supports server, CA (file or data), insecure-skip-tls-verify, bearer token
    (inline or tokenFile), client certificates and basic auth; exec and
    auth-provider plugins are not run.
    """
    file = Path(os.path.expanduser(os.fspath(path)))
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise LoginError(f"cannot read kubeconfig {file}: {exc}") from exc
    current = config.get("current-context")
    contexts = {c.get("name"): c.get("context") or {} for c in config.get("contexts") or ()}
    clusters = {c.get("name"): c.get("cluster") or {} for c in config.get("clusters") or ()}
    users = {u.get("name"): u.get("user") or {} for u in config.get("users") or ()}
    if not current or current not in contexts:
        raise LoginError(f"kubeconfig {file}: current-context {current!r} is not defined")
    context = contexts[current]
    cluster = clusters.get(context.get("cluster"))
    if not cluster or not cluster.get("server"):
        raise LoginError(f"kubeconfig {file}: cluster {context.get('cluster')!r} has no server")
    user = users.get(context.get("user"), {})
    base = file.parent
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token_path = _resolve(base, user["tokenFile"])
        token = Path(token_path).read_text(encoding="utf-8").strip() if token_path else None
    return kopf.ConnectionInfo(
        server=str(cluster["server"]).rstrip("/"),
        ca_path=_resolve(base, cluster.get("certificate-authority")),
        ca_data=cluster.get("certificate-authority-data"),
        insecure=cluster.get("insecure-skip-tls-verify"),
        certificate_path=_resolve(base, user.get("client-certificate")),
        certificate_data=user.get("client-certificate-data"),
        private_key_path=_resolve(base, user.get("client-key")),
        private_key_data=user.get("client-key-data"),
        username=user.get("username"),
        password=user.get("password"),
        token=token or None,
        default_namespace=context.get("namespace"),
    )


def connection_from_service_account(directory: Path = SERVICE_ACCOUNT_DIR) -> kopf.ConnectionInfo | None:
    """The pod's service account as connection info, or None outside a cluster."""
    token_file = directory / "token"
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if not token_file.exists() or not host:
        return None
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:
        host = f"[{host}]"
    namespace_file = directory / "namespace"
    ca_file = directory / "ca.crt"
    return kopf.ConnectionInfo(
        server=f"https://{host}:{port}",
        ca_path=str(ca_file) if ca_file.exists() else None,
        token=token_file.read_text(encoding="utf-8").strip() or None,
        default_namespace=namespace_file.read_text(encoding="utf-8").strip()
        if namespace_file.exists()
        else None,
    )


def login(kubeconfig: str = "") -> kopf.ConnectionInfo:
    """Credentials: ``kubeconfig`` if given, else the service account, else
    ``$KUBECONFIG`` (first file) or ``~/.kube/config``."""
    if kubeconfig:
        return connection_from_kubeconfig(kubeconfig)
    in_cluster = connection_from_service_account()
    if in_cluster is not None:
        return in_cluster
    env = os.environ.get("KUBECONFIG", "")
    candidates = [p for p in env.split(os.pathsep) if p] or [os.path.expanduser("~/.kube/config")]
    if os.path.exists(candidates[0]):
        return connection_from_kubeconfig(candidates[0])
    raise LoginError(
        "no Kubernetes credentials: set OPERATOR_KUBECONFIG, run in a pod with a service account, "
        "or provide KUBECONFIG"
    )


def resource_path(api_version: str, plural: str, namespace: str, name: str | None = None) -> str:
    """The REST path of a namespaced collection or object."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


class KubeClient:
    """Namespaced CRUD and idempotent apply against the Kubernetes API."""

    def __init__(
        self,
        credentials: Callable[[], kopf.ConnectionInfo],
        *,
        timeout: float = 30.0,
        user_agent: str = "hevlayer-operator",
    ) -> None:
        self._credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._user_agent = user_agent
        self._info: kopf.ConnectionInfo | None = None
        self._ssl: ssl.SSLContext | bool = True
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _connection(self, refresh: bool = False) -> kopf.ConnectionInfo:
        if self._info is None or refresh:
            info = self._credentials()
            if info.server.startswith("https:"):
                self._ssl = info.as_ssl_context()
            self._info = info
        return self._info

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        """One API call; the decoded object, None on 404, KubeError otherwise."""
        if self._session is None:
            raise RuntimeError("KubeClient is not entered")
        for attempt in (0, 1):
            info = self._connection(refresh=attempt == 1)
            headers = {
                **info.as_http_headers(),
                "Accept": "application/json",
                "User-Agent": self._user_agent,
            }
            data = None
            if body is not None:
                headers["Content-Type"] = content_type
                data = json.dumps(body)
            try:
                async with self._session.request(
                    method,
                    info.server.rstrip("/") + path,
                    data=data,
                    headers=headers,
                    ssl=self._ssl,
                ) as response:
                    text = await response.text()
                    status = response.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise KubeError(0, type(exc).__name__, f"{method} {path}: {exc}") from exc
            if status == 401 and attempt == 0:
                log.info("kubernetes credentials rejected; reloading them")
                continue
            if status == 404:
                return None
            payload = _decode(text)
            if status >= 400:
                raise KubeError(
                    status,
                    str(payload.get("reason") or "Error"),
                    f"{method} {path}: {payload.get('message') or text[:200]}",
                )
            return payload
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, api: tuple[str, str], namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        return await self.request("GET", resource_path(*api, namespace, name))

    async def create(self, api: tuple[str, str], namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create ``body``; KubeError 409 if it exists, 404 if the resource is not served."""
        result = await self.request("POST", resource_path(*api, namespace), body=body)
        if result is None:
            raise KubeError(404, "NotFound", f"{api[1]}.{api[0]} is not served by this cluster")
        return result

    async def patch(
        self, api: tuple[str, str], namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """JSON merge patch; None if the object does not exist."""
        return await self.request(
            "PATCH",
            resource_path(*api, namespace, name),
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def delete(self, api: tuple[str, str], namespace: str, name: str) -> bool:
        """Delete the object (dependents in the background); False if it did not exist."""
        result = await self.request(
            "DELETE",
            resource_path(*api, namespace, name),
            body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        )
        return result is not None

    async def delete_owned(self, api: tuple[str, str], namespace: str, name: str, owner_uid: str) -> bool:
        """Delete the object unless another owner controls it; False if nothing was deleted."""
        live = await self.get(api, namespace, name)
        if live is None:
            return False
        controller = _controller(live)
        if controller is not None and controller.get("uid") != owner_uid:
            log.warning(
                "not deleting %s %s/%s: controlled by %s/%s",
                api[1],
                namespace,
                name,
                controller.get("kind"),
                controller.get("name"),
            )
            return False
        return await self.delete(api, namespace, name)

    async def apply(
        self, api: tuple[str, str], manifest: Mapping[str, Any], patch: Mapping[str, Any]
    ) -> Applied:
        """Make the object of ``manifest`` exist and match ``patch``.

        Creates it from ``manifest`` when absent; merge-patches it with
        ``patch`` when it differs; does nothing when it already matches.
        Raises NotOwned when the live object has a controller other than the
        manifest's (an object of the same name that someone else manages).
        """
        meta = manifest["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        live = await self.get(api, namespace, name)
        if live is None:
            try:
                await self.create(api, namespace, creation_body(manifest))
                return Applied.CREATED
            except KubeError as exc:
                if exc.status != 409:
                    raise
                live = await self.get(api, namespace, name)
                if live is None:
                    raise
        foreign = _foreign_controller(manifest, live)
        if foreign is not None:
            raise NotOwned(f"{api[1]} {namespace}/{name} is controlled by {foreign}, not by this Pipeline")
        if is_applied(patch, live):
            return Applied.UNCHANGED
        if await self.patch(api, namespace, name, patch) is None:
            raise KubeError(409, "Conflict", f"{api[1]} {namespace}/{name} disappeared while patching")
        return Applied.PATCHED


def _controller(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return ref  # type: ignore[no-any-return]
    return None


def _foreign_controller(manifest: Mapping[str, Any], live: Mapping[str, Any]) -> str | None:
    """The live object's controller when it is not the manifest's, as "Kind/name"."""
    wanted, actual = _controller(manifest), _controller(live)
    if actual is None or wanted is None or actual.get("uid") == wanted.get("uid"):
        return None
    return f"{actual.get('kind')}/{actual.get('name')} (uid {actual.get('uid')})"


def _decode(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"message": text[:200]}
    return value if isinstance(value, dict) else {"items": value}
