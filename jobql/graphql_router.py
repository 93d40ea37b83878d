"""Strawberry's FastAPI router, with jobql's WebSocket authentication, streamed uploads and
GraphiQL page."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING, Any

from cross_web import StarletteRequestAdapter
from starlette.responses import HTMLResponse
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.file_uploads.utils import replace_placeholders_with_files

from jobql.auth import InvalidToken
from jobql.multipart import FormLimits, FormRejected, read_form
from jobql.request_guard import UPLOADS
from jobql.resolvers.context import Context

if TYPE_CHECKING:
    from pathlib import Path

    from cross_web import AsyncHTTPRequestAdapter
    from starlette.requests import Request
    from strawberry.types.unset import UnsetType

GRAPHIQL_HTML = files("jobql").joinpath("static/graphiql.html").read_text(encoding="utf-8")


class StreamingRequestAdapter(StarletteRequestAdapter):
    """Keeps hold of the request, so that a multipart body can be read as a stream."""

    def __init__(self, request: Request) -> None:
        super().__init__(request)
        self.starlette_request = request


class JobqlRouter(GraphQLRouter[Context, None]):
    request_adapter_class = StreamingRequestAdapter

    def __init__(self, *args: Any, incoming_dir: Path, upload_limits: FormLimits, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.incoming_dir = incoming_dir
        self.upload_limits = upload_limits

    async def parse_multipart(self, request: AsyncHTTPRequestAdapter) -> dict[str, Any]:
        assert isinstance(request, StreamingRequestAdapter)
        starlette_request = request.starlette_request
        form = await read_form(
            starlette_request.stream(),
            request.content_type or "",
            self.incoming_dir,
            self.upload_limits,
            starlette_request.scope["state"][UPLOADS],
        )
        operations = self.parse_json(form.fields.get("operations", "{}"))
        files_map = self.parse_json(form.fields.get("map", "{}"))
        if not isinstance(operations, dict) or not isinstance(files_map, dict):
            raise FormRejected("'operations' and 'map' must be JSON objects.")
        try:
            return replace_placeholders_with_files(operations, files_map, form.files)
        except (KeyError, IndexError, TypeError) as exc:
            raise FormRejected("'map' names a file or a variable that is not there.") from exc

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """Accept a WebSocket only with a valid token, from `connection_init` or the upgrade."""
        authorization = _authorization_param(context.connection_params) or context.authorization
        try:
            context.authenticate(authorization)
        except InvalidToken as exc:
            raise ConnectionRejectionError({"message": str(exc)}) from exc
        return None

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        return HTMLResponse(GRAPHIQL_HTML)


def _authorization_param(params: Any) -> object:
    if not isinstance(params, dict):
        return None
    for key, value in params.items():
        if isinstance(key, str) and key.lower() == "authorization":
            return value
    return None
