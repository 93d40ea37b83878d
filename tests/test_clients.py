"""Other clients than gql: graphql-http's GraphQL-over-HTTP audit, the graphql-ws and graphql-sse
npm clients (run with Node), and multipart subscriptions read with httpx."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import uuid
from datetime import timedelta
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from jobql.auth import SCOPE_SEND_EMAIL, issue_token
from jobql.client import JOB_SUBSCRIPTION
from jobql.graphql_app import prefers_graphql_response
from tests.conftest import SECRET_KEY, token
from tests.support import SEND_WELCOME

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.support import SmtpServer, WebServer

pytestmark = pytest.mark.usefixtures("worker")

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "tests" / "js"
NODE_TIMEOUT = 60
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
GRAPHQL_RESPONSE = "application/graphql-response+json"
MULTIPART_ACCEPT = 'multipart/mixed;subscriptionSpec="1.0", application/json'
SSE_ACCEPT = "text/event-stream"
EXPIRED = issue_token(SECRET_KEY, "late", (), ttl=timedelta(seconds=-30))
BAD_TOKENS = pytest.mark.parametrize(
    "bad_token", [None, "not-a-jwt", EXPIRED], ids=["none", "garbage", "expired"]
)


@functools.cache
def node_flags() -> tuple[str, ...]:
    """Node 20 has a global WebSocket (which graphql-ws needs) only behind a flag."""
    check = "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
    has_websocket = subprocess.run(["node", "-e", check], timeout=NODE_TIMEOUT, check=False)
    return () if has_websocket.returncode == 0 else ("--experimental-websocket",)


def node(script: str, *args: str) -> Any:
    """Run one of tests/js/*.mjs and return the JSON it prints."""
    if shutil.which("node") is None or not (ROOT / "node_modules" / "graphql-http").is_dir():
        pytest.skip("no node or no node_modules (npm ci)")
    command = ["node", *node_flags(), str(JS / script), *args]
    completed = subprocess.run(
        command, cwd=ROOT, timeout=NODE_TIMEOUT, capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, f"{script} failed:\n{completed.stderr}"
    return json.loads(completed.stdout)


def bearer(user_token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {user_token}"} if user_token else {}


def post(web: WebServer, body: Any, accept: str | None, user_token: str | None) -> httpx.Response:
    headers = {**bearer(user_token), **({"Accept": accept} if accept else {})}
    return httpx.post(web.http_url, json=body, headers=headers, timeout=30)


def queue_email(web: WebServer, user: str, delay_seconds: int = 2) -> dict[str, Any]:
    """A welcome email to a fresh address; the delay keeps it PENDING while a client subscribes."""
    email = f"py-{uuid.uuid4()}@example.com"
    variables = {"email": email, "username": "Py", "delaySeconds": delay_seconds}
    response = post(
        web, {"query": SEND_WELCOME, "variables": variables}, None, token(user, SCOPE_SEND_EMAIL)
    )
    body = response.json()
    assert response.status_code == 200 and "errors" not in body, body
    job: dict[str, Any] = body["data"]["sendWelcomeEmail"]
    return {**job, "email": email}


def error_codes(result: dict[str, Any]) -> list[str]:
    return [error.get("extensions", {}).get("code") for error in result.get("errors") or []]


def assert_followed_to_success(
    queued: dict[str, Any], events: list[dict[str, Any]], smtp_server: SmtpServer
) -> None:
    """The events start with the job as it was when the client subscribed (still PENDING: it
    was queued with a delay), go forward only, and end in SUCCESS with the email sent."""
    assert events, "no event"
    assert all("errors" not in event for event in events), events
    jobs = [event["data"]["job"] for event in events]
    assert {job["id"] for job in jobs} == {queued["id"]}
    states = [job["state"] for job in jobs]
    assert states[0] == queued["state"] == "PENDING", states
    assert states[-1] == "SUCCESS", states
    order = ["PENDING", "STARTED", "PROGRESS", "SUCCESS"]
    assert states == sorted(states, key=order.index), states
    assert [job["done"] for job in jobs] == [False] * (len(jobs) - 1) + [True]
    assert jobs[-1]["result"]["recipient"] == queued["email"]
    assert len(smtp_server.handler.to(queued["email"])) == 1


# GraphQL over HTTP: the audit, and the media types one by one.


def test_graphql_over_http_audit_passes_every_must_and_should(web: WebServer) -> None:
    results = node("audit.mjs", web.http_url, token("auditor"))

    assert len(results) >= 50, results  # the whole suite ran
    failing = [
        result
        for result in results
        if result["name"].startswith(("MUST", "SHOULD")) and result["status"] != "ok"
    ]
    assert not failing, json.dumps(failing, indent=2)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/*", False),
        ("application/json", False),
        ("text/html", False),
        (GRAPHQL_RESPONSE, True),
        (f"{GRAPHQL_RESPONSE}; charset=utf-8", True),
        (f"{GRAPHQL_RESPONSE}, application/json;q=0.9", True),
        (f"application/json, {GRAPHQL_RESPONSE}", True),
        (f"{GRAPHQL_RESPONSE};q=0.5, application/json", False),
        (f"{GRAPHQL_RESPONSE};q=0.5, */*", False),
        (f"{GRAPHQL_RESPONSE};q=0, */*", False),
        (f"application/json;q=0.5, {GRAPHQL_RESPONSE}", True),
        (f"text/html, {GRAPHQL_RESPONSE};q=0.8, */*;q=0.1", True),
    ],
)
def test_media_type_negotiation(accept: str | None, expected: bool) -> None:
    headers = {"accept": accept} if accept is not None else {}
    assert prefers_graphql_response(headers) is expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"query": "{"}, "Syntax Error"),
        ({"query": "{ noSuchField }"}, "Cannot query field"),
        (
            {"query": "query Job($id: ID!) { job(id: $id) { id } }", "variables": {"id": None}},
            "",
        ),
    ],
    ids=["parse", "validation", "variables"],
)
def test_request_error_is_400_without_data_for_graphql_response_json(
    web: WebServer, body: dict[str, Any], message: str
) -> None:
    response = post(web, body, GRAPHQL_RESPONSE, token("reader"))

    assert response.status_code == 400
    assert response.headers["content-type"] == f"{GRAPHQL_RESPONSE}; charset=utf-8"
    assert "Accept" in response.headers["vary"]
    result = response.json()
    assert "data" not in result
    assert message in result["errors"][0]["message"]


@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_application_json_keeps_200_and_null_data_for_a_request_error(
    web: WebServer, accept: str | None
) -> None:
    response = post(web, {"query": "{"}, accept, token("reader"))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    result = response.json()
    assert result["data"] is None
    assert "Syntax Error" in result["errors"][0]["message"]


def test_execution_is_200_with_data_for_graphql_response_json(web: WebServer) -> None:
    query = {"query": "query Job($id: ID!) { job(id: $id) { id } }", "variables": {"id": "x"}}

    send = {"query": 'mutation { sendWelcomeEmail(email: "a@example.com", username: "A") { id } }'}

    found = post(web, query, GRAPHQL_RESPONSE, token("reader"))
    forbidden = post(web, send, GRAPHQL_RESPONSE, token("reader"))
    anonymous = post(web, query, GRAPHQL_RESPONSE, None)

    assert found.status_code == 200
    assert found.headers["content-type"] == f"{GRAPHQL_RESPONSE}; charset=utf-8"
    assert found.json() == {"data": {"job": None}}
    # A field error (here: a missing scope) happens while executing: 200, with the data entry.
    assert forbidden.status_code == 200
    assert forbidden.json()["data"] is None
    assert error_codes(forbidden.json()) == ["FORBIDDEN"]
    # No token: refused before the document is even parsed, so nothing was executed.
    assert anonymous.status_code == 401
    assert "data" not in anonymous.json()
    assert error_codes(anonymous.json()) == ["UNAUTHENTICATED"]


def test_malformed_request_is_a_graphql_response_for_graphql_response_json(
    web: WebServer,
) -> None:
    headers = {"Content-Type": "application/json", **bearer(token("reader"))}
    response = httpx.post(
        web.http_url, content=b'{"query', headers={**headers, "Accept": GRAPHQL_RESPONSE}
    )
    plain = httpx.post(web.http_url, content=b'{"query', headers=headers)

    assert response.status_code == 400
    assert response.headers["content-type"] == f"{GRAPHQL_RESPONSE}; charset=utf-8"
    assert response.json() == {"errors": [{"message": "Unable to parse request body as JSON"}]}
    assert plain.status_code == 400  # unchanged for everyone else
    assert plain.headers["content-type"].startswith("text/plain")


# Subscriptions from Node: graphql-ws over WebSocket, graphql-sse over Server-Sent Events.


def test_graphql_ws_client_follows_a_job_to_success(
    web: WebServer, smtp_server: SmtpServer
) -> None:
    run = node("subscribe-ws.mjs", web.http_url, token("node-ws", SCOPE_SEND_EMAIL))

    assert run["error"] is None, run
    assert_followed_to_success(run["queued"], run["events"], smtp_server)


def test_graphql_sse_client_follows_a_job_to_success(
    web: WebServer, smtp_server: SmtpServer
) -> None:
    run = node("subscribe-sse.mjs", web.http_url, token("node-sse", SCOPE_SEND_EMAIL))

    assert run["error"] is None, run
    assert_followed_to_success(run["queued"], run["events"], smtp_server)


@BAD_TOKENS
def test_graphql_sse_client_without_valid_token_gets_unauthenticated(
    web: WebServer, bad_token: str | None
) -> None:
    job = queue_email(web, "sse-owner")

    run = node("subscribe-sse.mjs", web.http_url, bad_token or "", job["id"])

    assert run["error"] is None, run
    [event] = run["events"]
    assert event["data"] is None
    assert error_codes(event) == ["UNAUTHENTICATED"]


def test_graphql_sse_client_cannot_follow_another_users_job(web: WebServer) -> None:
    job = queue_email(web, "sse-owner")

    run = node("subscribe-sse.mjs", web.http_url, token("sse-intruder"), job["id"])

    [event] = run["events"]
    assert event["data"] is None
    assert error_codes(event) == ["NOT_FOUND"]


# Multipart subscriptions, read with httpx.


def multipart_payloads(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The `payload`s of a multipart subscription response, as they arrive (heartbeats, `{}`,
    skipped). A transport error ({"payload": null, "errors": [...]}) comes as its errors."""
    content_type = Message()
    content_type["content-type"] = response.headers["content-type"]
    boundary = content_type.get_param("boundary")
    assert isinstance(boundary, str), response.headers["content-type"]
    delimiter = f"\r\n--{boundary}"
    buffer = ""
    preamble = True
    for chunk in response.iter_text():
        buffer += chunk
        while (end := buffer.find(delimiter)) >= 0:
            part, buffer = buffer[:end], buffer[end + len(delimiter) :]
            if not preamble and part.strip():
                _headers, _, body = part.partition("\r\n\r\n")
                message = json.loads(body)
                if message.get("payload") is not None:
                    yield message["payload"]
                elif message.get("errors"):
                    yield {"data": None, "errors": message["errors"]}
            preamble = False
        if not preamble and buffer.startswith("--"):
            return  # the close delimiter
    raise AssertionError(f"the stream ended without its close delimiter: {buffer!r}")


def subscribe_multipart(
    web: WebServer, job_id: str, user_token: str | None, query: str = JOB_SUBSCRIPTION
) -> list[dict[str, Any]]:
    headers = {"Accept": MULTIPART_ACCEPT, **bearer(user_token)}
    body = {"query": query, "variables": {"id": job_id}}
    with httpx.stream("POST", web.http_url, json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("multipart/mixed")
        return list(multipart_payloads(response))


def test_multipart_subscription_follows_a_job_to_success(
    web: WebServer, smtp_server: SmtpServer
) -> None:
    job = queue_email(web, "multipart")

    events = subscribe_multipart(web, job["id"], token("multipart"))

    assert_followed_to_success(job, events, smtp_server)


@BAD_TOKENS
def test_multipart_subscription_without_valid_token_gets_unauthenticated(
    web: WebServer, bad_token: str | None
) -> None:
    job = queue_email(web, "multipart-owner")

    [event] = subscribe_multipart(web, job["id"], bad_token)

    assert event["data"] is None
    assert error_codes(event) == ["UNAUTHENTICATED"]


# Both streams report a document that does not parse as a result with errors (graphql-sse
# requires it), rather than breaking the response off after its headers.


def test_sse_stream_reports_a_syntax_error(web: WebServer) -> None:
    headers = {"Accept": SSE_ACCEPT, **bearer(token("reader"))}
    body = {"query": "subscription { job(id: "}
    with httpx.stream("POST", web.http_url, json=body, headers=headers, timeout=30) as response:
        text = response.read().decode()

    assert response.status_code == 200
    events = [block for block in text.split("\r\n\r\n") if block.strip()]
    assert [event.split("\r\n")[0] for event in events] == ["event: next", "event: complete"]
    result = json.loads(events[0].split("\r\n")[1].removeprefix("data: "))
    assert "data" not in result or result["data"] is None
    assert "Syntax Error" in result["errors"][0]["message"]


def test_multipart_stream_reports_a_syntax_error(web: WebServer) -> None:
    [event] = subscribe_multipart(web, UNKNOWN_ID, token("reader"), query="subscription { job(")

    assert event["data"] is None
    assert "Syntax Error" in event["errors"][0]["message"]
