"""The one Kubernetes API seam: raw JSON over the REST API, sync (the CLI) and async (the
webhook cache, the operator), on the clients of the `kubernetes` package.

Configuration the way kubectl finds it: --kubeconfig, --context, $KUBECONFIG, ~/.kube/config,
else in-cluster; the `kubernetes` package's loaders do the auth (tokens, client certs, exec
plugins). Everything above that is a request with an explicit method, path, query, body and
content type, answered with:

- the body parsed with orjson, untouched: the digest is computed over the object exactly as
  the API server sends it, and the generated model classes would re-shape it (drop unknown
  fields, turn int-or-string values into one type);
- the API server's `Warning` headers (a webhook answers a dry-run with them);
- its `Date` header (the workflow uses the API server's clock, not the laptop's);
- an error status as ``ApiError``, whose ``str()`` is the API server's own message on one
  line; a server that cannot be asked raises ``Unreachable``.

`Kube.kubectl` runs kubectl with the same kubeconfig and context, for what kubectl should
compute itself (client-side apply).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from changegate.core.errors import ChangeGateError
from changegate.core.names import GROUP as GROUP
from changegate.core.names import PLURAL as PLURAL
from changegate.core.names import VERSION as VERSION
from changegate.core.statement import PLURALS as GATED_PLURALS

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# kubectl's default request timeout is none, but a CLI must not hang; every other call
# is small, and a minute is far beyond a healthy API server's answer.
TIMEOUT = 60.0

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# (apiVersion, kind) -> REST plural: the gated kinds and the ones changegate itself writes.
PLURALS: Mapping[tuple[str, str], str] = {
    **GATED_PLURALS,
    (f"{GROUP}/{VERSION}", "ChangeApproval"): PLURAL,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
}

# kubectl's `Error from server (Reason): message` -> the status the API server answered.
_REASON_STATUS = {"BadRequest": 400, "Unauthorized": 401, "Forbidden": 403, "NotFound": 404,
                  "Conflict": 409, "AlreadyExists": 409, "Invalid": 422,
                  "TooManyRequests": 429, "InternalError": 500, "ServiceUnavailable": 503}
# RFC 7234 warning: `299 - "text"` (the API server's form); the text is a quoted string.
_WARNING = re.compile(r'^\s*\d{3}\s+\S+\s+"((?:[^"\\]|\\.)*)"')


class ApiError(ChangeGateError):
    """A call the API server refused (``status``). ``str()`` is its message, on one line."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


class Unreachable(ChangeGateError):
    """The API server could not be asked (connection, TLS, timeout): no answer to judge."""


@dataclass(frozen=True, kw_only=True)
class Response:
    status: int
    body: Any  # parsed JSON, None for an empty body
    warnings: tuple[str, ...] = ()
    date: datetime | None = None  # the API server's clock (second resolution)


# -- paths ----------------------------------------------------------------------------------

def object_path(api_version: str, kind: str, namespace: str, name: str | None = None,
                subresource: str | None = None) -> str:
    """``/apis/apps/v1/namespaces/ns/deployments/name[/status]`` and the like."""
    plural = PLURALS.get((api_version, kind))
    if plural is None:
        raise ChangeGateError(f"{api_version} {kind} is not a kind changegate reads or writes")
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{root}/namespaces/{quote(namespace, safe='')}/{plural}"
    if name is not None:
        path += "/" + quote(name, safe="")
    if subresource:
        path += "/" + subresource
    return path


def approvals_path(namespace: str | None, name: str | None = None) -> str:
    if namespace is None:
        return f"/apis/{GROUP}/{VERSION}/{PLURAL}"
    return object_path(f"{GROUP}/{VERSION}", "ChangeApproval", namespace, name)


def configmap_path(namespace: str, name: str) -> str:
    return object_path("v1", "ConfigMap", namespace, name)


# -- answers --------------------------------------------------------------------------------

def parse_warnings(values: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        match = _WARNING.match(value)
        text = match.group(1) if match else value
        out.append(re.sub(r"\\(.)", r"\1", text))
    return tuple(out)


def _date(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        return parsedate_to_datetime(raw).astimezone(UTC)
    except (TypeError, ValueError):
        return None


def _error(status: int, data: bytes, path: str) -> ApiError:
    try:
        doc = orjson.loads(data or b"{}")
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and doc.get("kind") == "Status":
        message = " ".join(str(doc.get("message") or doc.get("reason") or
                               f"HTTP {status}").split())
        reason = str(doc.get("reason") or "")
    else:
        text = data.decode("utf-8", "replace").strip().splitlines()
        message, reason = f"HTTP {status} from {path}" + (f": {text[0][:200]}" if text else ""), ""
    if status == 401:
        message = f"Unauthorized: the API server did not accept your credentials ({message})"
    return ApiError(status, reason, message)


def _answer(status: int, data: bytes, headers: Any, path: str, ok_missing: bool) -> Response:
    warnings = parse_warnings(headers.getall("Warning", []) if hasattr(headers, "getall")
                              else headers.getlist("Warning") if hasattr(headers, "getlist")
                              else [])
    date = _date(headers.get("Date"))
    if status == 404 and ok_missing:
        return Response(status=404, body=None, warnings=warnings, date=date)
    if status >= 400:
        raise _error(status, data, path)
    try:
        body = orjson.loads(data) if data else None
    except orjson.JSONDecodeError as exc:
        raise ApiError(status, "", f"{path}: the answer is not JSON") from exc
    return Response(status=status, body=body, warnings=warnings, date=date)


def _unreachable(host: str, exc: BaseException) -> Unreachable:
    text = str(getattr(exc, "reason", None) or exc)
    if "Connection refused" in text:
        text = "connection refused"
    elif "timed out" in text.lower() or isinstance(exc, TimeoutError):
        text = "timed out"
    else:
        # urllib3 wraps the cause in "<urllib3.connection...>: Failed to establish ..."; the
        # client turns TLS failures into a multi-line reason whose last line says what failed.
        lines = text.split(">: ")[-1].strip().splitlines()
        text = (lines[-1] if lines else type(exc).__name__)[:200]
    return Unreachable(f"cannot reach the API server at {host}: {text}")


def _headers(content_type: str) -> dict[str, str]:
    return {"Accept": JSON, "Content-Type": content_type}


# -- configuration --------------------------------------------------------------------------

def kubeconfig_path(kubeconfig: str | None) -> str | None:
    """One file (--kubeconfig, ~/.kube/config) or $KUBECONFIG's whole list, or None (then
    in-cluster). The `kubernetes` loaders merge a list (KubeConfigMerger) the way kubectl
    does, skipping missing files and keeping the first file's entry for each name."""
    if kubeconfig:
        return kubeconfig
    env = os.environ.get("KUBECONFIG")
    if env:
        return env
    default = Path.home() / ".kube" / "config"
    return str(default) if default.exists() else None


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _active_context(path: str | None, context: str | None) -> str | None:
    """--context, else kubectl's current-context: the FIRST file that sets one wins (the
    `kubernetes` merger lets the last one win, so changegate names the context itself)."""
    if context or path is None:
        return context
    import yaml

    for name in path.split(os.pathsep):
        file = Path(name).expanduser()
        if not name or not file.is_file():
            continue
        try:
            doc = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return None  # the loader reports what is wrong with the file
        current = doc.get("current-context") if isinstance(doc, dict) else None
        if current:
            return str(current)
    return None


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the kubeconfig context (kubectl's default), else `default`."""
    from kubernetes.config import list_kube_config_contexts
    from kubernetes.config.config_exception import ConfigException

    path = kubeconfig_path(kubeconfig)
    if path is None:
        if SERVICE_ACCOUNT_NAMESPACE.exists():
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
        return "default"
    try:
        contexts, active = list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=path)
    except (ConfigException, OSError, ValueError):
        return "default"  # connect() reports the real problem with the kubeconfig
    chosen = active
    context = _active_context(path, context)
    if context:
        chosen = next((c for c in contexts if c.get("name") == context), active)
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else "default"


def _where(kubeconfig: str | None) -> str | None:
    path = kubeconfig_path(kubeconfig)
    if path is not None and not any(Path(p).expanduser().exists()
                                    for p in path.split(os.pathsep) if p):
        raise ChangeGateError(f"kubeconfig {path}: no such file")
    if path is None and not _in_cluster():
        raise ChangeGateError("no kubeconfig: set KUBECONFIG or pass --kubeconfig")
    return path


@contextlib.contextmanager
def _config_errors(path: str | None, errors: type[Exception]) -> Iterator[None]:
    """The loaders' exceptions as one readable line."""
    try:
        yield
    except errors as exc:
        raise ChangeGateError(f"kubeconfig: {exc}") from exc
    except FileNotFoundError as exc:
        raise ChangeGateError(f"kubeconfig {path}: no such file") from exc


def _configure(config: Any, configuration: Any, path: str | None, context: str | None) -> Any:
    """In-cluster or kubeconfig settings into ``configuration``, with ``config`` the loader
    module of `kubernetes` or `kubernetes.aio` (whose kubeconfig loader is a coroutine)."""
    if path is None:
        return config.load_incluster_config(client_configuration=configuration)
    return config.load_kube_config(config_file=path, context=_active_context(path, context),
                                   client_configuration=configuration)


def sync_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A `kubernetes.client.ApiClient`. Raises ChangeGateError with one readable line."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    path = _where(kubeconfig)
    configuration = client.Configuration()
    with _config_errors(path, ConfigException):
        _configure(config, configuration, path, context)
    return client.ApiClient(configuration)


async def async_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A `kubernetes.aio.client.ApiClient`, configured the same way."""
    from kubernetes.aio import client, config
    from kubernetes.aio.config.config_exception import ConfigException

    path = _where(kubeconfig)
    configuration = client.Configuration()
    with _config_errors(path, ConfigException):
        loading = _configure(config, configuration, path, context)
        if loading is not None:  # kubernetes.aio reads a kubeconfig asynchronously
            await loading
    return client.ApiClient(configuration)


# -- the seam -------------------------------------------------------------------------------

class Kube:
    """One API server as one user, blocking (the CLI)."""

    def __init__(self, api_client: Any, *, kubeconfig: str | None = None,
                 context: str | None = None) -> None:
        self.client = api_client
        self.host = str(api_client.configuration.host)
        self.kubeconfig, self.context = kubeconfig, context

    def call(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
             body: Any = None, content_type: str = JSON, ok_missing: bool = False,
             timeout: float = TIMEOUT) -> Response:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            method, url, headers, _, _ = self.client.param_serialize(
                method, path, query_params=list((query or {}).items()),
                header_params=_headers(content_type), auth_settings=["BearerToken"])
            raw = self.client.call_api(method, url, header_params=headers, body=body,
                                       _request_timeout=timeout)
            data = raw.read()
        except (urllib3.exceptions.HTTPError, OSError, ApiException) as exc:
            raise _unreachable(self.host, exc) from exc
        return _answer(raw.status, data, raw.headers, path, ok_missing)

    def get(self, path: str, query: Mapping[str, str] | None = None) -> dict[str, Any] | None:
        """The object at ``path``, or None when it does not exist."""
        found = self.call("GET", path, query=query, ok_missing=True).body
        return found if isinstance(found, dict) else None

    def whoami(self) -> tuple[str, datetime]:
        """The username the API server sees (SelfSubjectReview) and the server's clock."""
        answer = self.call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                           body={"apiVersion": "authentication.k8s.io/v1",
                                 "kind": "SelfSubjectReview"})
        user = ((answer.body or {}).get("status") or {}).get("userInfo") or {}
        name = user.get("username")
        if not isinstance(name, str) or not name:
            raise ChangeGateError("the API server did not say who you are (SelfSubjectReview)")
        return name, answer.date or datetime.now(UTC)

    def kubectl(self, args: Sequence[str], *, stdin: bytes = b"") -> tuple[bytes, tuple[str, ...]]:
        """Run kubectl as this user (same kubeconfig and context): its stdout and the API
        server's warnings it printed. A failure raises ChangeGateError with kubectl's words."""
        binary = shutil.which("kubectl")
        if binary is None:
            raise ChangeGateError("kubectl not found on PATH: client-side apply is computed by "
                                  "kubectl; install it, or use --server-side")
        argv = [binary, *args]
        if self.kubeconfig:
            argv += ["--kubeconfig", self.kubeconfig]
        if self.context:
            argv += ["--context", self.context]
        done = subprocess.run(argv, input=stdin, capture_output=True, timeout=TIMEOUT * 2,
                              check=False)
        err = done.stderr.decode("utf-8", "replace").splitlines()
        # kubectl prints each API server warning on stderr as "Warning: TEXT".
        warnings = tuple(line.removeprefix("Warning: ") for line in err
                         if line.startswith("Warning: "))
        if done.returncode != 0:
            problem = " ".join(" ".join(line for line in err
                                        if not line.startswith("Warning: ")).split())
            # `Error from server (Forbidden): ...`: what the API server answered, raised as
            # a direct call would raise it, so a webhook's refusal reads the same either way.
            _, found, rest = problem.partition("Error from server (")
            reason, closed, message = rest.partition("): ")
            if found and closed and reason in _REASON_STATUS:
                raise ApiError(_REASON_STATUS[reason], reason, message)
            raise ChangeGateError(f"kubectl {args[0]}: {problem or f'exit {done.returncode}'}")
        return done.stdout, warnings


class AsyncKube:
    """One API server as one identity, on asyncio (the webhook cache, the operator)."""

    def __init__(self, api_client: Any) -> None:
        self.client = api_client
        self.host = str(api_client.configuration.host)

    async def close(self) -> None:
        await self.client.close()

    async def _send(self, method: str, path: str, query: Mapping[str, str] | None, body: Any,
                    content_type: str, timeout: float) -> Any:
        import aiohttp

        try:
            method, url, headers, _, _ = await self.client.param_serialize(
                method, path, query_params=list((query or {}).items()),
                header_params=_headers(content_type), auth_settings=["BearerToken"])
            return await self.client.call_api(method, url, header_params=headers, body=body,
                                              _request_timeout=timeout)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _unreachable(self.host, exc) from exc

    async def call(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                   body: Any = None, content_type: str = JSON, ok_missing: bool = False,
                   timeout: float = TIMEOUT) -> Response:
        import aiohttp

        response = await self._send(method, path, query, body, content_type, timeout)
        try:
            data = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(self.host, exc) from exc
        finally:
            response.response.release()
        return _answer(response.status, data, response.headers, path, ok_missing)

    async def get(self, path: str, query: Mapping[str, str] | None = None, *,
                  timeout: float = TIMEOUT) -> dict[str, Any] | None:
        """The object at ``path``, or None when it does not exist."""
        found = (await self.call("GET", path, query=query, ok_missing=True,
                                 timeout=timeout)).body
        return found if isinstance(found, dict) else None

    async def watch(self, path: str, query: Mapping[str, str], *, timeout: float
                    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch (``watch=1`` added), each a parsed line, until the server
        ends the stream. An ERROR event is yielded like any other: the caller decides."""
        response = await self._send("GET", path, {**query, "watch": "1"}, None, JSON, timeout)
        try:
            if response.status >= 400:
                raise _error(response.status, await response.read(), path)
            async for line in response.response.content:
                if line.strip():
                    yield orjson.loads(line)
        finally:
            response.response.release()


def connect(kubeconfig: str | None = None, context: str | None = None) -> Kube:
    # kubectl is given only what the user named: it reads $KUBECONFIG (a list) and picks the
    # current context itself, exactly as a bare kubectl would.
    return Kube(sync_client(kubeconfig, context), kubeconfig=kubeconfig, context=context)


async def connect_async(kubeconfig: str | None = None, context: str | None = None
                        ) -> AsyncKube:
    return AsyncKube(await async_client(kubeconfig, context))
