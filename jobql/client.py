"""An async client for a running jobql server.

Mutations and the `job` query go over HTTP (an upload as a GraphQL multipart request, its
file streamed from disk); the `job` subscription goes over WebSocket with the
graphql-transport-ws protocol, the token in the `connection_init` payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Self, cast
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from strawberry.utils.str_converters import to_camel_case
from websockets.asyncio.client import connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.typing import Subprotocol

from jobql.registry import Kinds, built_in_kinds

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator
    from pathlib import Path
    from types import TracebackType

    from websockets.asyncio.client import ClientConnection

    from jobql.kinds import Kind

DEFAULT_URL = "http://127.0.0.1:8000/graphql"
GRAPHQL_TRANSPORT_WS = Subprotocol("graphql-transport-ws")
SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
OVERLOADED = "OVERLOADED"
NOT_FOUND = "NOT_FOUND"
UNAUTHENTICATED = "UNAUTHENTICATED"


def result_fields(kind: Kind[Any, Any]) -> str:
    """`... on <its result type> { <every field> }`, by GraphQL names."""
    definition = kind.result.__strawberry_definition__
    names = " ".join(
        field.graphql_name or to_camel_case(field.python_name) for field in definition.fields
    )
    return f"... on {definition.name} {{ {names} }}"


def job_fragment(kinds: Kinds) -> str:
    """`fragment JobFields on Job`: every field of a job, with the result of every kind."""
    results = "\n        ".join(result_fields(kind) for kind in kinds)
    return f"""
fragment JobFields on Job {{
    id kind state done progress createdAt startedAt finishedAt
    result {{
        __typename
        {results}
    }}
    error {{ code message retryable }}
}}"""


def with_job_fields(document: str, kinds: Kinds | None = None) -> str:
    """`document`, which spreads `...JobFields`, with the fragment it needs."""
    return document + job_fragment(kinds or built_in_kinds())


JOB_QUERY = with_job_fields("query Job($id: ID!) { job(id: $id) { ...JobFields } }")
JOB_SUBSCRIPTION = with_job_fields(
    "subscription FollowJob($id: ID!) { job(id: $id) { ...JobFields } }"
)

# A job as the API answers it: the fields of JOB_FIELDS, by their GraphQL names.
JobData = dict[str, Any]

# How often a dropped subscription is opened again before giving up, and the pause before
# each attempt. The subscription starts with the job's current state, so nothing is missed.
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 4.0)
# How long a client that has the job's end waits for the server's `complete`.
COMPLETE_TIMEOUT = 5.0


class ClientError(Exception):
    """Anything that stopped a request from getting an answer the caller can use."""


class ApiError(ClientError):
    """A GraphQL error the server answered with; `code` is its `extensions.code`."""

    def __init__(self, code: str, message: str, extensions: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extensions: dict[str, Any] = extensions or {"code": code}


class Unreachable(ClientError):
    """The server could not be reached, or went away before it answered."""


class BadResponse(ClientError):
    """The server answered, but not with a GraphQL response (a wrong URL, say)."""


class InvalidUrl(ClientError, ValueError):
    """The API URL is not an http(s) URL."""


class _ConnectionLost(Exception):
    """The subscription's WebSocket closed before the job was done; it may be opened again."""


class JobqlClient:
    """One server, one token. Use it as an async context manager."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        kinds: Kinds | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidUrl(f"not an http(s) URL: {url!r}")
        self.url = url
        self.token = token
        self.kinds = kinds or built_in_kinds()
        self._job_query = with_job_fields(
            "query Job($id: ID!) { job(id: $id) { ...JobFields } }", self.kinds
        )
        self._job_subscription = with_job_fields(
            "subscription FollowJob($id: ID!) { job(id: $id) { ...JobFields } }", self.kinds
        )
        self._jobs_query = with_job_fields(
            "query Jobs($first: Int, $after: String, $state: JobState, $kind: JobKind) "
            "{ jobs(first: $first, after: $after, state: $state, kind: $kind) "
            "{ edges { node { ...JobFields } } pageInfo { hasNextPage endCursor } } }",
            self.kinds,
        )
        self._cancel_mutation = with_job_fields(
            "mutation CancelJob($id: ID!) { cancelJob(id: $id) { ...JobFields } }", self.kinds
        )
        self._retry_mutation = with_job_fields(
            "mutation RetryJob($id: ID!) { retryJob(id: $id) { ...JobFields } }", self.kinds
        )
        self._wait_query = with_job_fields(
            "query WaitForJob($id: ID!, $timeout: Int) "
            "{ waitForJob(id: $id, timeoutSeconds: $timeout) { ...JobFields } }",
            self.kinds,
        )
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def ws_url(self) -> str:
        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, *parts[1:]))

    def absolute_url(self, path: str) -> str:
        """A URL the server gave as a path (a result file's), made absolute against the API URL."""
        return urljoin(self.url, path)

    async def mutate(
        self, document: str, operation_name: str, variables: dict[str, Any]
    ) -> JobData:
        """Send a kind's mutation (which spreads `...JobFields`); answers with the job."""
        data = await self._post(
            json={
                "query": with_job_fields(document, self.kinds),
                "operationName": operation_name,
                "variables": variables,
            }
        )
        return _only_job(data)

    async def mutate_with_file(
        self,
        document: str,
        operation_name: str,
        variables: dict[str, Any],
        file_variable: str,
        path: Path,
    ) -> JobData:
        """`mutate`, with the file at `path` (streamed from disk) as the upload
        `file_variable`, in a GraphQL multipart request."""
        operations = {
            "query": with_job_fields(document, self.kinds),
            "operationName": operation_name,
            "variables": {**variables, file_variable: None},
        }
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as file:
            data = await self._post(
                data={
                    "operations": json.dumps(operations),
                    "map": json.dumps({"0": [f"variables.{file_variable}"]}),
                },
                files={"0": (_plain_filename(path), file, content_type)},
            )
        return _only_job(data)

    async def get_job(self, job_id: str) -> JobData | None:
        """The job, or None if it does not exist, has expired or is someone else's."""
        data = await self._post(
            json={"query": self._job_query, "operationName": "Job", "variables": {"id": job_id}}
        )
        return cast("JobData | None", data["job"])

    async def list_jobs(
        self,
        first: int,
        after: str | None = None,
        state: str | None = None,
        kind: str | None = None,
    ) -> tuple[list[JobData], str | None]:
        """A page of the caller's jobs, newest first, and the cursor of the next (None at
        the end)."""
        data = await self._post(
            json={
                "query": self._jobs_query,
                "operationName": "Jobs",
                "variables": {"first": first, "after": after, "state": state, "kind": kind},
            }
        )
        page = data["jobs"]
        jobs = [edge["node"] for edge in page["edges"]]
        more = page["pageInfo"]["hasNextPage"]
        return jobs, page["pageInfo"]["endCursor"] if more else None

    async def cancel_job(self, job_id: str) -> JobData | None:
        """`cancelJob`: the job as it is then, or None if there is no such job of the caller's."""
        data = await self._post(
            json={
                "query": self._cancel_mutation,
                "operationName": "CancelJob",
                "variables": {"id": job_id},
            }
        )
        return cast("JobData | None", data["cancelJob"])

    async def retry_job(self, job_id: str) -> JobData:
        """`retryJob`: the new job that retries `job_id` (`ApiError` NOT_FOUND if there is no
        such job of the caller's, BAD_USER_INPUT if it cannot be retried)."""
        data = await self._post(
            json={
                "query": self._retry_mutation,
                "operationName": "RetryJob",
                "variables": {"id": job_id},
            }
        )
        return cast("JobData", data["retryJob"])

    async def wait_for_job(self, job_id: str, timeout_seconds: int) -> JobData | None:
        """`waitForJob`: the job once done, or as it is after `timeout_seconds` (1..60)."""
        data = await self._post(
            json={
                "query": self._wait_query,
                "operationName": "WaitForJob",
                "variables": {"id": job_id, "timeout": timeout_seconds},
            },
            # The server answers after up to `timeout_seconds`, then as any request.
            timeout=httpx.Timeout(timeout_seconds + self.timeout, connect=self.connect_timeout),
        )
        return cast("JobData | None", data["waitForJob"])

    def describe(self, job: JobData) -> list[str]:
        """What to print of a finished job's result: its kind says."""
        result = job.get("result") or {}
        kind = next((k for k in self.kinds if k.graphql_name == job.get("kind")), None)
        if kind is None or not result:
            return []
        fields = {key: value for key, value in result.items() if key != "__typename"}
        if kind.describe is not None:
            return kind.describe(fields, self.absolute_url)
        return [f"{key}: {value}" for key, value in fields.items()]

    async def follow(self, job_id: str) -> AsyncGenerator[JobData, None]:
        """The job now, then at every change of state, until it is done.

        A WebSocket that drops is opened again (the subscription starts over with the job's
        current state); `Unreachable` once that keeps failing.
        """
        delays = iter(RECONNECT_DELAYS)
        followed = False
        while True:
            try:
                async with aclosing(self._subscribe(job_id)) as jobs:
                    async for job in jobs:
                        followed = True
                        delays = iter(RECONNECT_DELAYS)
                        yield job
                return
            except (_ConnectionLost, Unreachable) as lost:
                delay = next(delays, None)
                if delay is None or (isinstance(lost, Unreachable) and not followed):
                    # Never reached at all, or lost for good.
                    if isinstance(lost, Unreachable):
                        raise
                    raise Unreachable(f"lost the connection to {self.ws_url}: {lost}") from lost
                await asyncio.sleep(delay)

    async def _post(self, **request: Any) -> dict[str, Any]:
        try:
            response = await self._http.post(self.url, **request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Unreachable(f"cannot connect to {self.url}: {_reason(exc)}") from exc
        except httpx.TimeoutException as exc:
            raise Unreachable(f"{self.url} did not answer in time") from exc
        except httpx.TransportError as exc:
            raise Unreachable(f"the connection to {self.url} failed: {_reason(exc)}") from exc
        return _graphql_data(response)

    async def _subscribe(self, job_id: str) -> AsyncGenerator[JobData, None]:
        try:
            async with connect(
                self.ws_url,
                subprotocols=[GRAPHQL_TRANSPORT_WS],
                open_timeout=self.connect_timeout,
                # The subscription sends nothing between state changes: keep it open.
                ping_interval=20,
                ping_timeout=20,
            ) as websocket:
                await self._init(websocket)
                subscribe = {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {
                        "query": self._job_subscription,
                        "operationName": "FollowJob",
                        "variables": {"id": job_id},
                    },
                }
                await websocket.send(json.dumps(subscribe))
                while True:
                    message = await _receive(websocket)
                    kind = message.get("type")
                    if kind == "next":
                        payload = message.get("payload") or {}
                        _raise_errors(payload)
                        job = (payload.get("data") or {}).get("job")
                        if not isinstance(job, dict):
                            raise BadResponse("the subscription sent no job")
                        if job.get("done"):
                            # Before the caller has it (and may stop reading).
                            await _await_complete(websocket)
                            yield job
                            return
                        yield job
                    elif kind == "error":
                        errors = message.get("payload")
                        _raise_errors({"errors": errors if isinstance(errors, list) else [{}]})
                    elif kind == "complete":
                        raise _ConnectionLost("the subscription ended before the job did")
        except InvalidURI as exc:
            raise BadResponse(f"not a WebSocket URL: {self.ws_url}") from exc
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (502, 503, 504):
                raise Unreachable(f"{self.ws_url} answered HTTP {status}") from exc
            raise BadResponse(f"{self.ws_url} refused the WebSocket: HTTP {status}") from exc
        except (OSError, TimeoutError) as exc:
            raise Unreachable(f"cannot connect to {self.ws_url}: {_reason(exc)}") from exc
        except InvalidHandshake as exc:
            raise BadResponse(f"{self.ws_url} is not a GraphQL WebSocket: {exc}") from exc

    async def _init(self, websocket: ClientConnection) -> None:
        payload = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if websocket.subprotocol != GRAPHQL_TRANSPORT_WS:
            raise BadResponse(f"{self.ws_url} does not speak {GRAPHQL_TRANSPORT_WS}")
        await websocket.send(json.dumps({"type": "connection_init", "payload": payload}))
        async with asyncio.timeout(self.connect_timeout):
            while (await _receive(websocket)).get("type") != "connection_ack":
                pass


async def _await_complete(websocket: ClientConnection) -> None:
    """Wait for the server's `complete` before hanging up: a client that closes on the last
    `next` races the server's end of the operation."""
    with contextlib.suppress(TimeoutError, _ConnectionLost, BadResponse):
        async with asyncio.timeout(COMPLETE_TIMEOUT):
            while (await _receive(websocket)).get("type") != "complete":
                pass


async def _receive(websocket: ClientConnection) -> dict[str, Any]:
    """The next protocol message; answers pings on the way, and reads close codes."""
    while True:
        try:
            raw = await websocket.recv()
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            reason = closed.rcvd.reason if closed.rcvd else ""
            if code == 4403:
                # The server rejects a connection_init whose token it does not accept.
                raise ApiError(UNAUTHENTICATED, "The server refused the token.") from closed
            if code is not None and 4400 <= code < 4500:
                raise BadResponse(f"the server closed the WebSocket: {code} {reason}") from closed
            raise _ConnectionLost(f"closed ({code or 'no close frame'})") from closed
        try:
            message = json.loads(raw)
        except ValueError as exc:
            raise BadResponse("the server sent a WebSocket message that is not JSON") from exc
        if not isinstance(message, dict):
            raise BadResponse("the server sent a WebSocket message that is not an object")
        if message.get("type") == "ping":
            await websocket.send(json.dumps({"type": "pong"}))
            continue
        return message


def _graphql_data(response: httpx.Response) -> dict[str, Any]:
    """The response's `data`, or the first error it carries as an exception."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not ("data" in body or "errors" in body):
        if response.status_code in (502, 503, 504):
            raise Unreachable(f"{response.url} answered HTTP {response.status_code}")
        raise BadResponse(
            f"{response.url} did not answer as a GraphQL API (HTTP {response.status_code})"
        )
    _raise_errors(body)
    data = body.get("data")
    if not isinstance(data, dict):
        raise BadResponse(f"{response.url} answered with no data")
    return data


def _raise_errors(body: dict[str, Any]) -> None:
    errors = body.get("errors")
    if not errors:
        return
    first = errors[0] if isinstance(errors, list) and isinstance(errors[0], dict) else {}
    extensions = first.get("extensions")
    extensions = extensions if isinstance(extensions, dict) else {}
    code = str(extensions.get("code") or "GRAPHQL_ERROR")
    message = str(first.get("message") or "The server answered with an error.")
    raise ApiError(code, message, {**extensions, "code": code})


def _only_job(data: dict[str, Any]) -> JobData:
    """The job a mutation answered with (its one field)."""
    [job] = data.values()
    if not isinstance(job, dict):
        raise BadResponse("the server answered with no job")
    return job


def _plain_filename(path: Path) -> str:
    """The name to send: the server takes only a plain, printable name."""
    name = path.name
    return name if name.isprintable() and len(name) <= 255 else "file"


def _reason(exc: BaseException) -> str:
    """The innermost cause's words ("Connection refused"), not a chain of wrappers."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
