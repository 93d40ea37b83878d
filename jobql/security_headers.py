"""Headers that keep browsers from misreading jobql's answers or framing its pages.

Every HTTP response says `X-Content-Type-Options: nosniff`. The HTML pages (the job page
at `/` and GraphiQL) also get a Content-Security-Policy and `X-Frame-Options: DENY`: their
scripts come from jobql itself, or from unpkg with a checked hash when jobql's copy is
missing, and their inline scripts are allowed by hash, one by one.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import TYPE_CHECKING

from starlette.datastructures import MutableHeaders

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

CDN = "https://unpkg.com"
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
EVENT_HANDLER = re.compile(r"""\son[a-z]+="([^"]*)\"""")


def page_policy(pages: Iterable[Path]) -> str:
    """The Content-Security-Policy of the pages: what they run and load, and no more."""
    scripts: set[str] = set()
    handlers: set[str] = set()
    for page in pages:
        html = page.read_text(encoding="utf-8")
        scripts.update(_sha256(script) for script in INLINE_SCRIPT.findall(html))
        handlers.update(_sha256(handler) for handler in EVENT_HANDLER.findall(html))
    script_src = ["'self'", CDN, *sorted(scripts)]
    if handlers:
        script_src += ["'unsafe-hashes'", *sorted(handlers)]
    directives = {
        "default-src": ["'self'"],
        "script-src": script_src,
        # GraphiQL's editors set style attributes as they go.
        "style-src": ["'self'", "'unsafe-inline'", CDN],
        "img-src": ["'self'", "data:", "blob:"],
        "font-src": ["'self'", "data:", CDN],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


def _sha256(source: str) -> str:
    digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
    return f"'sha256-{digest}'"


class SecurityHeaders:
    def __init__(self, app: ASGIApp, policy: str) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                if headers.get("content-type", "").startswith("text/html"):
                    headers["Content-Security-Policy"] = self.policy
                    headers["X-Frame-Options"] = "DENY"
            await send(message)

        await self.app(scope, receive, send_with_headers)
