"""What every answer tells the browser: no sniffing, and the pages neither framed nor
running anything they were not built with."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

from tests.conftest import token

if TYPE_CHECKING:
    from tests.support import WebServer

HTML = {"Accept": "text/html"}


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/", {}),
        ("GET", "/graphql", HTML),  # GraphiQL
        ("GET", "/healthz", {}),
        ("GET", "/metrics", {}),
        ("GET", "/static/job-page.js", {}),
        ("GET", "/no-such-page", {}),
        ("POST", "/graphql", {"Content-Type": "application/json"}),
    ],
)
async def test_every_answer_says_nosniff(
    web: WebServer, method: str, path: str, headers: dict[str, str]
) -> None:
    body = b'{"query": "{ __typename }"}' if method == "POST" else None
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.request(
            method,
            web.url(path),
            headers={**headers, "Authorization": f"Bearer {token('headers')}"},
            content=body,
        )
    assert response.headers["x-content-type-options"] == "nosniff"
    is_page = response.headers.get("content-type", "").startswith("text/html")
    assert is_page == (path == "/" or headers == HTML)
    if is_page:
        assert response.headers["x-frame-options"] == "DENY"
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy
        assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
    else:
        assert "content-security-policy" not in response.headers


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
async def test_no_rest_api_documentation_is_served(web: WebServer, path: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(web.url(path))
    assert response.status_code == 404
