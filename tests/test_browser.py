"""The two browser pages, GraphiQL (GET /graphql) and the job page (GET /), in Debian's
Chromium driven by Playwright, with every request that is not to 127.0.0.1 blocked: both
pages must work from jobql's own /static/vendor/ files (`make assets`), with no CDN."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import FilePayload, Locator, async_playwright, expect

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.dev import graphiql_url
from tests.conftest import token
from tests.images import phone_photo

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from playwright.async_api import Browser, Page, Request, Response, Route, WebSocket

    from tests.support import WebServer

pytestmark = pytest.mark.usefixtures("worker")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-gpu",
]
VENDOR = ROOT / "jobql" / "static" / "vendor"
NODE_MODULES = ROOT / "node_modules"
SCREENSHOTS = ROOT / "docs" / "screenshots"
OUTPUT = ROOT / "test-output" / "browser"
PAGE_RESOURCES = {"document", "script", "stylesheet", "image", "font"}
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
TIMEOUT_MS = 15_000
# What `make assets` (scripts/build-assets.mjs) puts in jobql/static/vendor/.
VENDOR_FILES = (
    "react.production.min.js",
    "react-dom.production.min.js",
    "graphiql.min.js",
    "graphiql.min.css",
    "graphiql-plugin-explorer.umd.js",
    "graphiql-plugin-explorer.css",
    "graphql-ws.min.js",
)

expect.set_options(timeout=TIMEOUT_MS)

# What each page loads from unpkg when its own copy is missing, and where npm put that file.
CDN_FILES = {
    "https://unpkg.com/react@18.2.0/umd/react.production.min.js": (
        "react/umd/react.production.min.js"
    ),
    "https://unpkg.com/react-dom@18.2.0/umd/react-dom.production.min.js": (
        "react-dom/umd/react-dom.production.min.js"
    ),
    "https://unpkg.com/graphiql@3.8.3/graphiql.min.js": "graphiql/graphiql.min.js",
    "https://unpkg.com/graphiql@3.8.3/graphiql.min.css": "graphiql/graphiql.min.css",
    "https://unpkg.com/@graphiql/plugin-explorer@1.0.2/dist/index.umd.js": (
        "@graphiql/plugin-explorer/dist/index.umd.js"
    ),
    "https://unpkg.com/@graphiql/plugin-explorer@1.0.2/dist/style.css": (
        "@graphiql/plugin-explorer/dist/style.css"
    ),
    "https://unpkg.com/graphql-ws@6.4.2/umd/graphql-ws.min.js": "graphql-ws/umd/graphql-ws.min.js",
}


@dataclass
class Watched:
    """What a page asked the network for, and what went wrong."""

    page: Page
    blocked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    ws_sent: list[dict[str, Any]] = field(default_factory=list)
    ws_received: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.blocked == [], f"the page asked for something off this machine: {self.blocked}"
        assert self.failed == [], f"resources failed to load: {self.failed}"
        assert self.page_errors == [], f"uncaught errors in the page: {self.page_errors}"
        refused = [error for error in self.console_errors if "Content Security Policy" in error]
        assert refused == [], f"the page's own policy refused it something: {refused}"

    def connection_inits(self) -> list[dict[str, Any]]:
        return [frame for frame in self.ws_sent if frame.get("type") == "connection_init"]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (make system-packages)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        yield browser
        await browser.close()


async def open_page(browser: Browser, *, width: int = 1280, height: int = 800) -> Watched:
    """A fresh page in a fresh context; only 127.0.0.1 is reachable."""
    context = await browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    watched = Watched(page)

    async def local_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            watched.blocked.append(route.request.url)
            await route.abort("blockedbyclient")

    # What the page is made of; GraphQL requests (fetch, XHR) may fail on purpose.
    def request_failed(request: Request) -> None:
        if request.resource_type in PAGE_RESOURCES and request.url not in watched.blocked:
            watched.failed.append(f"{request.url} ({request.failure})")

    def response(response: Response) -> None:
        if response.request.resource_type in PAGE_RESOURCES and response.status >= 400:
            watched.failed.append(f"{response.url} (HTTP {response.status})")

    def websocket(ws: WebSocket) -> None:
        ws.on("framesent", lambda payload: watched.ws_sent.append(json.loads(payload)))
        ws.on("framereceived", lambda payload: watched.ws_received.append(str(payload)))

    await context.route("**/*", local_only)
    page.on("requestfailed", request_failed)
    page.on("response", response)
    page.on("pageerror", lambda error: watched.page_errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            watched.console_errors.append(message.text) if message.type == "error" else None
        ),
    )
    page.on("websocket", websocket)
    return watched


async def screenshot(
    page: Page | Locator, name: str, *, full_page: bool = False, docs: bool = True
) -> None:
    """Into the test run's output, and (`docs`) into docs/screenshots/ for the README; of
    the page, or of one part of it (a locator)."""
    for folder in (OUTPUT, SCREENSHOTS) if docs else (OUTPUT,):
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(page, Locator):
            await page.screenshot(path=folder / name)
        else:
            await page.screenshot(path=folder / name, full_page=full_page)


def require_vendor_files() -> None:
    missing = [name for name in VENDOR_FILES if not (VENDOR / name).is_file()]
    assert not missing, f"{missing} not in jobql/static/vendor/: run `make assets`"


# --- GraphiQL ------------------------------------------------------------------------------


async def replace_editor_text(page: Page, editor: str, text: str) -> None:
    """Type into one of GraphiQL's CodeMirror editors as a person pasting would."""
    await page.locator(f"{editor} .CodeMirror").first.click()
    await page.keyboard.press("Control+A")
    await page.keyboard.insert_text(text)
    value = await page.locator(f"{editor} .CodeMirror").first.evaluate(
        "element => element.CodeMirror.getValue()"
    )
    assert value == text


async def run_in_graphiql(page: Page, query: str) -> None:
    await replace_editor_text(page, ".graphiql-query-editor", query)
    # GraphiQL parses the query (operation name and type) a moment after each edit, then
    # hands it to the page, which puts it in the URL: run it only once it is there.
    await page.wait_for_function(
        "query => new URLSearchParams(location.search).get('q') === query", arg=query
    )
    await page.get_by_role("button", name=re.compile("Execute query")).click()


async def response_text(page: Page) -> str:
    value = await page.locator(".graphiql-response .CodeMirror").evaluate(
        "element => element.CodeMirror.getValue()"
    )
    assert isinstance(value, str)
    return value


async def queue_welcome_email(web: WebServer, bearer: str, delay_seconds: int = 0) -> str:
    mutation = """mutation Send($email: String!, $delay: Int!) {
      sendWelcomeEmail(email: $email, username: "Browser", delaySeconds: $delay) { id state }
    }"""
    email = f"browser-{uuid.uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            web.http_url,
            json={"query": mutation, "variables": {"email": email, "delay": delay_seconds}},
            headers={"Authorization": f"Bearer {bearer}"},
        )
    body = response.json()
    assert "errors" not in body, body
    return str(body["data"]["sendWelcomeEmail"]["id"])


async def test_graphiql_works_offline_and_sends_headers_in_connection_init(
    browser: Browser, web: WebServer
) -> None:
    require_vendor_files()
    bearer = token("browser-graphiql", SCOPE_SEND_EMAIL)
    watched = await open_page(browser)
    page = watched.page
    await page.goto(web.http_url)
    await expect(page.locator(".graphiql-query-editor .CodeMirror")).to_be_visible()

    await page.locator(".graphiql-editor-tools button", has_text="Headers").click()
    headers = json.dumps({"Authorization": f"Bearer {bearer}"}, indent=2)
    await replace_editor_text(page, ".graphiql-editor-tool .graphiql-editor:not(.hidden)", headers)

    # A query over HTTP, with the Headers tab's token
    await run_in_graphiql(page, f'{{ job(id: "{UNKNOWN_ID}") {{ id }} }}')
    await expect(page.locator(".graphiql-response")).to_contain_text('"job": null')
    assert json.loads(await response_text(page)) == {"data": {"job": None}}

    # A subscription over WebSocket: the browser cannot set the upgrade's headers, so the
    # token gets there only in the connection_init payload (without it: closed with 4403).
    job_id = await queue_welcome_email(web, bearer)
    await run_in_graphiql(
        page, f'subscription {{\n  job(id: "{job_id}") {{\n    id\n    state\n    done\n  }}\n}}'
    )
    await expect(page.locator(".graphiql-response")).to_contain_text('"SUCCESS"')
    job = json.loads(await response_text(page))["data"]["job"]
    assert job == {"id": job_id, "state": "SUCCESS", "done": True}
    assert [frame.get("payload") for frame in watched.connection_inits()] == [
        {"Authorization": f"Bearer {bearer}"}
    ]

    await screenshot(page, "graphiql.png")
    watched.assert_clean()
    await page.context.close()


async def test_graphiql_opened_by_jobql_dev_has_the_token_in_its_headers(
    browser: Browser, web: WebServer
) -> None:
    """The link `jobql dev` prints: the first query a newcomer runs works, and the token
    does not stay in the address bar."""
    require_vendor_files()
    bearer = token("browser-dev")
    watched = await open_page(browser)
    page = watched.page
    await page.goto(graphiql_url(web.http_url, bearer))
    await expect(page.locator(".graphiql-query-editor .CodeMirror")).to_be_visible()
    assert "#" not in page.url and bearer not in page.url

    await run_in_graphiql(page, f'{{ job(id: "{UNKNOWN_ID}") {{ id }} }}')
    await expect(page.locator(".graphiql-response")).to_contain_text('"job": null')
    await page.locator(".graphiql-editor-tools button", has_text="Headers").click()
    headers = await page.locator(
        ".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror"
    ).evaluate("element => element.CodeMirror.getValue()")
    assert json.loads(headers) == {"Authorization": f"Bearer {bearer}"}
    watched.assert_clean()
    await page.context.close()


# --- the job page --------------------------------------------------------------------------


async def test_job_page_uploads_and_follows_the_job_to_the_avatar(
    browser: Browser, web: WebServer
) -> None:
    require_vendor_files()
    bearer = token("browser-job-page")
    watched = await open_page(browser, width=900, height=900)
    page = watched.page
    await page.goto(web.url("/"))
    await page.get_by_label("Bearer token").fill(bearer)
    await page.get_by_label("Photo").set_input_files(
        files=FilePayload(name="holiday.jpg", mimeType="image/jpeg", buffer=phone_photo())
    )

    await expect(page.locator("#state")).to_have_text("SUCCESS")
    avatar = page.locator("#avatar")
    await expect(avatar).to_be_visible()
    await page.wait_for_function(
        "() => { const img = document.getElementById('avatar');"
        " return img.complete && img.naturalWidth > 0; }"
    )
    natural = await avatar.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert natural == [256, 256]
    assert re.fullmatch(r"/media/avatars/\S+", await avatar.get_attribute("src") or "")
    await expect(page.locator("#progress")).to_have_attribute("value", "100")
    await expect(page.locator("#upload-progress")).to_have_attribute("value", "100")
    await expect(page.locator("#error")).to_be_empty()
    job_id = await page.locator("#job-id").text_content()
    assert uuid.UUID(job_id or "")
    history = await page.locator("#history li").all_text_contents()
    assert "SUCCESS" in history[-1] and len(history) >= 2, history
    # "Your jobs" saw the new job and shows how it ended.
    await expect(your_job(page, job_id or "")).to_contain_text("SUCCESS")
    # Two WebSockets: the job's subscription and "Your jobs"'s feed, each with the token.
    assert [frame.get("payload") for frame in watched.connection_inits()] == [
        {"Authorization": f"Bearer {bearer}"}
    ] * 2
    await page.evaluate("document.activeElement.blur()")
    await screenshot(page, "job-page.png", full_page=True)

    # The token is remembered for the next visit.
    await page.reload()
    await expect(page.get_by_label("Bearer token")).to_have_value(bearer)
    watched.assert_clean()
    await page.context.close()


def your_job(page: Page, job_id: str) -> Locator:
    """The row of "Your jobs" that shows `job_id`."""
    return page.locator(f'#jobs-rows tr[data-job-id="{job_id}"]')


async def test_your_jobs_lists_follows_cancels_and_retries(
    browser: Browser, web: WebServer
) -> None:
    require_vendor_files()
    bearer = token(f"browser-jobs-{uuid.uuid4().hex[:6]}", SCOPE_SEND_EMAIL)
    later = await queue_welcome_email(web, bearer, delay_seconds=600)  # stays queued
    sent = await queue_welcome_email(web, bearer)
    someone_elses = await queue_welcome_email(web, token("browser-jobs-other", SCOPE_SEND_EMAIL))
    watched = await open_page(browser, width=900, height=1200)
    page = watched.page
    await page.goto(web.url("/"))
    await expect(page.locator("#jobs-status")).to_have_text(
        "Paste a bearer token to see your jobs."
    )

    await page.get_by_label("Bearer token").fill(bearer)

    # Newest first, from the `jobs` query; nobody else's.
    await expect(your_job(page, sent)).to_contain_text("SUCCESS")
    await expect(page.locator("#jobs-rows tr")).to_have_count(2)
    ids = await page.locator("#jobs-rows tr").evaluate_all("rows => rows.map(r => r.dataset.jobId)")
    assert ids == [sent, later]
    assert await your_job(page, someone_elses).count() == 0
    await expect(your_job(page, sent).get_by_role("button")).to_have_count(0)  # nothing to do

    # A job made elsewhere appears, pushed by the `jobs` subscription.
    made_elsewhere = await queue_welcome_email(web, bearer)
    await expect(your_job(page, made_elsewhere)).to_contain_text("SUCCESS")
    pushed = [frame for frame in watched.ws_received if made_elsewhere in frame]
    assert any('"SUCCESS"' in frame for frame in pushed), pushed

    # Cancel ends the queued one REVOKED; Retry queues it again, and the retry runs.
    await your_job(page, later).get_by_role("button", name=f"Cancel job {later}").click()
    await expect(your_job(page, later)).to_contain_text("REVOKED")
    await expect(your_job(page, later)).to_contain_text("CANCELLED")
    await your_job(page, later).get_by_role("button", name=f"Retry job {later}").click()
    retry = page.locator("#jobs-rows tr").first
    await expect(retry).to_contain_text(f"retry of {later[:8]}")
    await expect(retry).to_contain_text("SUCCESS")
    retry_id = await retry.get_attribute("data-job-id")
    assert retry_id not in (None, later, sent, made_elsewhere)
    await expect(page.locator("#jobs-error")).to_be_empty()
    await page.evaluate("document.activeElement.blur()")
    await screenshot(page.locator("section[aria-labelledby=jobs-heading]"), "your-jobs.png")

    # A second Retry of the same job answers with the same retry: still one row for it.
    await page.reload()
    again = your_job(page, later).get_by_role("button", name=f"Retry job {later}")
    async with page.expect_response(
        lambda response: "RetryJob" in (response.request.post_data or "")
    ) as answered:
        await again.click()
    body = await (await answered.value).json()
    assert body["data"]["retryJob"]["id"] == retry_id, body
    await expect(page.locator("#jobs-rows tr")).to_have_count(4)
    await expect(page.locator("#jobs-error")).to_be_empty()
    watched.assert_clean()
    await page.context.close()


async def test_job_page_shows_the_servers_error(browser: Browser, web: WebServer) -> None:
    require_vendor_files()
    watched = await open_page(browser)
    page = watched.page
    await page.goto(web.url("/"))
    await page.get_by_label("Bearer token").fill("Bearer not-a-token")
    await page.get_by_label("Photo").set_input_files(
        files=FilePayload(name="notes.jpg", mimeType="image/jpeg", buffer=b"not a photo" * 100)
    )
    error = page.locator("#error")
    await expect(error).to_contain_text("UNAUTHENTICATED")
    await expect(error).to_have_attribute("role", "alert")
    await expect(page.locator("#state")).to_have_text("\N{EN DASH}")  # nothing queued
    # "Your jobs" says the same of its own request, and shows no table.
    await expect(page.locator("#jobs-error")).to_contain_text("UNAUTHENTICATED")
    await expect(page.locator("#jobs")).to_be_hidden()
    await screenshot(page, "job-page-error.png", docs=False)
    assert watched.blocked == [] and watched.page_errors == []
    await page.context.close()


# --- the CDN fallback ----------------------------------------------------------------------


async def test_pages_fall_back_to_the_cdn_without_vendor_files(
    browser: Browser, web: WebServer
) -> None:
    """With /static/vendor/ empty, each page loads the same versions from unpkg (served here
    from node_modules), and their integrity hashes match."""
    if not NODE_MODULES.is_dir():
        pytest.skip("no node_modules (npm ci)")
    watched = await open_page(browser)
    page = watched.page
    from_cdn: list[str] = []

    async def no_vendor_files(route: Route) -> None:
        await route.fulfill(status=404, body="not built")

    async def fake_cdn(route: Route) -> None:
        url = route.request.url
        from_cdn.append(url)
        content_type = "text/css" if url.endswith(".css") else "application/javascript"
        await route.fulfill(
            path=NODE_MODULES / CDN_FILES[url],
            content_type=content_type,
            headers={"Access-Control-Allow-Origin": "*"},
        )

    await page.route("**/static/vendor/**", no_vendor_files)
    await page.route("https://unpkg.com/**", fake_cdn)

    await page.goto(web.http_url)
    await expect(page.locator(".graphiql-query-editor .CodeMirror")).to_be_visible()
    await expect(page.get_by_role("button", name="Show GraphiQL Explorer")).to_be_visible()
    await page.goto(web.url("/"))
    assert await page.evaluate("typeof window.graphqlWs.createClient") == "function"
    await expect(page.locator("#error")).to_be_empty()

    assert sorted(from_cdn) == sorted(CDN_FILES)
    assert watched.page_errors == []
    await page.context.close()
