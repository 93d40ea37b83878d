"""Strawberry's FastAPI router, with jobql's WebSocket authentication and GraphiQL page."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING, Any

from starlette.responses import HTMLResponse
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter

from jobql.auth import InvalidToken
from jobql.resolvers.context import Context

if TYPE_CHECKING:
    from starlette.requests import Request
    from strawberry.types.unset import UnsetType

GRAPHIQL_HTML = files("jobql").joinpath("static/graphiql.html").read_text(encoding="utf-8")


class JobqlRouter(GraphQLRouter[Context, None]):
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
