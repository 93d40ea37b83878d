"""Callbacks, as both sides see them: which URLs may be called, what is POSTed and how it
is signed.

The web process checks a `callbackUrl` against `JOBQL_CALLBACK_ALLOWED_HOSTS` at the
mutation; the worker checks it again before each POST (the list may have changed) and
signs the body with `JOBQL_CALLBACK_SECRET`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from strawberry.types.base import get_object_definition
from strawberry.utils.str_converters import to_camel_case

if TYPE_CHECKING:
    from jobql.jobs import JobSnapshot
    from jobql.registry import Kinds

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
SIGNATURE_HEADER = "Jobql-Signature"
DELIVERY_HEADER = "Jobql-Delivery"


class BadAllowedHosts(ValueError):
    """An entry of `JOBQL_CALLBACK_ALLOWED_HOSTS` is not `[http://|https://]host[:port]`."""


class CallbackUrlRefused(ValueError):
    """A callback URL that is not on the allow-list, or not a plain http(s) URL."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a callback may reach: a scheme, a host (as written, lower case) and a port."""

    scheme: str
    host: str
    port: int


def allowed_endpoints(setting: str) -> frozenset[Endpoint]:
    """The endpoints of `JOBQL_CALLBACK_ALLOWED_HOSTS`: comma-separated `host` (https, 443),
    `host:port` (https), `http://host[:port]` or `https://host[:port]`."""
    endpoints = set()
    for entry in (part.strip() for part in setting.split(",")):
        if not entry:
            continue
        written = entry if "://" in entry else f"https://{entry}"
        try:
            parts = urlsplit(written)
            port = parts.port
        except ValueError as exc:
            raise BadAllowedHosts(f"JOBQL_CALLBACK_ALLOWED_HOSTS: {entry!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if (
            scheme not in DEFAULT_PORTS
            or not parts.hostname
            or "@" in parts.netloc
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise BadAllowedHosts(
                f"JOBQL_CALLBACK_ALLOWED_HOSTS: {entry!r} is not [http://|https://]host[:port]."
            )
        default = DEFAULT_PORTS[scheme]
        endpoints.add(Endpoint(scheme, parts.hostname.lower(), default if port is None else port))
    return frozenset(endpoints)


def checked_callback_url(url: str, allowed: frozenset[Endpoint]) -> str:
    """`url` if it is a plain http(s) URL to an allowed endpoint; else `CallbackUrlRefused`.

    The host must be written as the allow-list writes it: another spelling of the same
    address (`127.1`, `0x7f000001`, a trailing dot, an IDN) is refused, never resolved.
    Both the standard library's parser and the HTTP client's must read the same host and
    port, so that no URL means one thing here and another when it is called.
    """
    if not allowed:
        raise CallbackUrlRefused("Callbacks are not enabled on this server.")
    if len(url) > MAX_URL_LENGTH:
        raise CallbackUrlRefused(f"callbackUrl must be at most {MAX_URL_LENGTH} characters.")
    if not url or any(not "!" <= ch <= "~" or ch == "\\" for ch in url):
        raise CallbackUrlRefused(
            "callbackUrl must be printable ASCII, without spaces or backslashes."
        )
    try:
        parts = urlsplit(url)
        port = parts.port
        seen = httpx.URL(url)
        seen_host, seen_port = seen.host, seen.port  # an IDN is decoded here
    except (ValueError, httpx.InvalidURL) as exc:
        raise CallbackUrlRefused(f"callbackUrl is not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise CallbackUrlRefused("callbackUrl must be an http or https URL.")
    if "@" in parts.netloc:
        raise CallbackUrlRefused("callbackUrl must not carry a user name or password.")
    if parts.fragment or "#" in url:
        raise CallbackUrlRefused("callbackUrl must not have a fragment.")
    host = (parts.hostname or "").lower()
    default = DEFAULT_PORTS[scheme]
    endpoint = Endpoint(scheme, host, default if port is None else port)
    client_view = Endpoint(seen.scheme, seen_host, default if seen_port is None else seen_port)
    if endpoint not in allowed or client_view != endpoint:
        raise CallbackUrlRefused(
            f"callbackUrl must be on this server's allow-list ({scheme}://{host}:{endpoint.port}"
            " is not)."
        )
    return url


@dataclass(frozen=True, slots=True)
class CallbackStatus:
    """How the POST to a job's callback URL went so far."""

    url: str
    attempts: int
    delivered_at: datetime | None
    last_error: str | None


def callback_status(values: list[bytes | str | None]) -> CallbackStatus | None:
    """A callback hash's `url`, `attempts`, `delivered_at` and `last_error`, as read by
    HMGET (None when the job has no callback)."""
    url, attempts, delivered_at, last_error = (
        v.decode() if isinstance(v, bytes) else v for v in values
    )
    if url is None:
        return None
    return CallbackStatus(
        url=url,
        attempts=int(attempts or 0),
        delivered_at=datetime.fromisoformat(delivered_at) if delivered_at else None,
        last_error=last_error,
    )


CALLBACK_FIELDS = ("url", "attempts", "delivered_at", "last_error")


def job_document(job: JobSnapshot, kinds: Kinds) -> dict[str, Any]:
    """The job as the API answers it, by GraphQL names: `Job`'s fields, its result with
    `__typename`, its error."""
    result: dict[str, object] | None = None
    if job.result is not None:
        loaded = kinds.load_result(job.kind, job.result)
        definition = get_object_definition(type(loaded), strict=True)
        result = {"__typename": definition.name}
        for field in definition.fields:
            name = field.graphql_name or to_camel_case(field.python_name)
            result[name] = _graphql_value(getattr(loaded, field.python_name))
    error = job.error
    return {
        "id": job.id,
        "kind": kinds[job.kind].graphql_name,
        "state": job.state.value,
        "done": job.done,
        "progress": job.progress,
        "createdAt": job.created_at.isoformat(),
        "startedAt": job.started_at.isoformat() if job.started_at else None,
        "finishedAt": job.finished_at.isoformat() if job.finished_at else None,
        "attempts": job.attempts,
        "expiresAt": job.expires_at.isoformat(),
        "result": result,
        "error": None
        if error is None
        else {"code": error.code, "message": error.message, "retryable": error.retryable},
    }


def _graphql_value(value: object) -> object:
    """A result field's value as GraphQL serializes it (an enum by its name)."""
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return [_graphql_value(item) for item in value]
    return value


def callback_body(job: JobSnapshot, kinds: Kinds) -> bytes:
    return json.dumps({"job": job_document(job, kinds)}, separators=(",", ":")).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `Jobql-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"
