"""The GraphQL endpoint: Strawberry's ASGI view, with jobql's context and WebSocket
authentication, streamed uploads, GraphiQL page, and the `application/graphql-response+json`
media type of the GraphQL-over-HTTP spec.

It is routed by the FastAPI app as a plain ASGI endpoint: FastAPI's dependency injection
would cost more per request than the GraphQL execution it wraps, and Strawberry's FastAPI
router keeps each request's sub-response on the router itself, where concurrent requests
can take each other's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from importlib.resources import files
from typing import TYPE_CHECKING, Any, cast, overload

import orjson
from cross_web import HTTPException, StarletteRequestAdapter
from graphql import GraphQLError
from starlette.datastructures import MutableHeaders
from starlette.responses import HTMLResponse, Response
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.file_uploads.utils import replace_placeholders_with_files
from strawberry.types.execution import PreExecutionError, SubscriptionExecutionResult
from strawberry.types.unset import UNSET

from jobql.auth import InvalidToken
from jobql.errors import Unauthenticated
from jobql.multipart import FormLimits, FormRejected, read_form
from jobql.request_guard import UPLOADS
from jobql.resolvers.context import Context, Services
from jobql.schema import is_unexpected
from jobql.ws_protocols import ClosingWebSocketAdapter, LegacyWSHandler, TransportWSHandler

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cross_web import AsyncHTTPRequestAdapter
    from starlette.requests import Request
    from starlette.websockets import WebSocket
    from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
    from strawberry.types import ExecutionResult
    from strawberry.types.unset import UnsetType

GRAPHIQL_HTML = files("jobql").joinpath("static/graphiql.html").read_text(encoding="utf-8")

JSON = "application/json"
GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
GRAPHQL_RESPONSE_CONTENT_TYPE = f"{GRAPHQL_RESPONSE_JSON}; charset=utf-8"
UNEXPECTED_ERROR = "Unexpected error."

logger = logging.getLogger(__name__)


class StreamingRequestAdapter(StarletteRequestAdapter):
    """Keeps hold of the request, so that a multipart body can be read as a stream."""

    def __init__(self, request: Request) -> None:
        super().__init__(request)
        self.starlette_request = request


class JobqlGraphQL(GraphQL[Context, None]):
    """What it adds to Strawberry's view.

    - Media types (GraphQL over HTTP): a client that prefers `application/graphql-response+json`
      (by its Accept header) gets it, with 400 and no `data` entry for a request error (the
      document does not parse or validate, the variables do not coerce, the request is not a
      GraphQL request), and 200 once execution happened. Anyone else, `Accept: */*` or no
      Accept included, gets `application/json` exactly as Strawberry answers it (200 for every
      GraphQL error). The view is one object shared by concurrent requests, so nothing about
      a request is kept on it: the chosen media type and status travel on the request's own
      sub-response, which `create_response` reads.
    - Streams (Server-Sent Events, multipart subscriptions): an error raised before the first
      result (a syntax error, which the parser cache raises) is sent as a result with `errors`,
      as graphql-sse requires, instead of breaking the response off after its headers.
    """

    request_adapter_class = StreamingRequestAdapter
    websocket_adapter_class = ClosingWebSocketAdapter
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    def __init__(
        self,
        *args: Any,
        services: Services,
        upload_limits: FormLimits,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.services = services
        self.upload_limits = upload_limits

    def decode_json(self, data: str | bytes) -> object:
        # orjson's errors are json.JSONDecodeError, which Strawberry answers with a 400.
        return orjson.loads(data)

    def parse_json(self, data: str | bytes) -> Any:
        parsed = super().parse_json(data)
        # Strawberry reads a request as an object (or a batch, which it refuses with a 400);
        # anything else would raise on its first `.get`.
        if not isinstance(parsed, dict | list):
            raise HTTPException(400, "The request body must be a JSON object.")
        return parsed

    def encode_json(self, data: object) -> str:
        # Text: WebSocket frames are made from it as well as HTTP bodies.
        return orjson.dumps(data).decode()

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        authorization = request.headers.get("authorization")
        await self.services.tokens.prepare(authorization)
        context = Context(self.services, authorization)
        context.request = request
        return context

    @overload
    async def run(
        self, request: Request, context: Context = ..., root_value: None = ...
    ) -> Response: ...

    @overload
    async def run(
        self, request: WebSocket, context: Context = ..., root_value: None = ...
    ) -> WebSocket: ...

    async def run(
        self,
        request: Request | WebSocket,
        context: Context = UNSET,
        root_value: None = UNSET,
    ) -> Response | WebSocket:
        if self.is_websocket_request(request):
            context = await self.get_context(request, request)
            try:
                return await super().run(request, context, root_value)
            finally:
                if context.connection_user is not None:
                    self.services.connections.release(context.connection_user)
                self.services.reclaimer.closed()
        try:
            return await super().run(request, context, root_value)
        except HTTPException as exc:
            # Strawberry answers these (body not JSON, `query` missing or not a string, a
            # mutation over GET...) in plain text; a client that asked for a GraphQL response
            # gets one.
            if not prefers_graphql_response(request.headers):
                raise
            body = {"errors": [{"message": exc.reason}]}
            return Response(
                self.encode_json(body),
                status_code=exc.status_code,
                media_type=GRAPHQL_RESPONSE_CONTENT_TYPE,
                headers={"Vary": "Accept"},
            )

    async def execute_operation(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        request_data: GraphQLRequestData | list[GraphQLRequestData],
        context: Context,
        root_value: None,
        sub_response: Response,
    ) -> ExecutionResult | list[ExecutionResult] | SubscriptionExecutionResult:
        result = await super().execute_operation(
            request, request_adapter, request_data, context, root_value, sub_response
        )
        if isinstance(result, AsyncGenerator):  # a Server-Sent Events or multipart stream
            return cast("SubscriptionExecutionResult", _errors_as_results(result))
        return result

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        result = await super().execute_single(
            request, request_adapter, sub_response, context, root_value, request_data
        )
        if prefers_graphql_response(request.headers):
            sub_response.headers["content-type"] = GRAPHQL_RESPONSE_CONTENT_TYPE
            if is_unauthenticated(result):
                sub_response.status_code = 401
                sub_response.headers["www-authenticate"] = "Bearer"
            elif is_request_error(result):
                sub_response.status_code = 400
        return result

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        response = await super().process_result(request, result)
        if is_request_error(result) and prefers_graphql_response(request.headers):
            # Nothing was executed, so there is no `data` entry (not even a null one).
            response.pop("data", None)
        return response

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        headers = MutableHeaders(raw=list(sub_response.headers.raw))
        media_type = headers.get("content-type", JSON)
        del headers["content-type"]
        response = Response(
            self.encode_json(response_data),
            media_type=media_type,
            status_code=sub_response.status_code or 200,
        )
        response.headers.raw.extend(headers.raw)
        response.headers.add_vary_header("Accept")
        return response

    async def parse_multipart(self, request: AsyncHTTPRequestAdapter) -> dict[str, Any]:
        assert isinstance(request, StreamingRequestAdapter)
        starlette_request = request.starlette_request
        form = await read_form(
            starlette_request.stream(),
            request.content_type or "",
            self.services.storage,
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
        """Accept a WebSocket only with a valid token, from `connection_init` or the upgrade,
        and while its user holds fewer than `JOBQL_MAX_CONNECTIONS_PER_USER` (else raise
        `RateLimited`, which the protocol handlers answer)."""
        authorization = _authorization_param(context.connection_params) or context.authorization
        await self.services.tokens.prepare(authorization)
        try:
            principal = context.authenticate(authorization)
        except InvalidToken as exc:
            logger.info(
                "UNAUTHENTICATED: WebSocket refused: %s", exc, extra={"code": "UNAUTHENTICATED"}
            )
            self.services.metrics.refused_subscription("UNAUTHENTICATED")
            raise ConnectionRejectionError({"message": str(exc)}) from exc
        if context.connection_user is None:
            self.services.connections.acquire(principal.user_id)
            context.connection_user = principal.user_id
        return None

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        return HTMLResponse(GRAPHIQL_HTML)


def prefers_graphql_response(headers: Mapping[str, str]) -> bool:
    """Whether the Accept header prefers `application/graphql-response+json` to
    `application/json`.

    Each is given the quality of the most specific media range that matches it (RFC 9110,
    12.5.1). On a tie the new type wins only if the client named it: `*/*`, `application/*` and
    a missing Accept mean `application/json`, as the spec asks of servers until its watershed.
    """
    ranges = _media_ranges(headers.get("accept") or "")
    graphql_q, graphql_specificity = _quality(ranges, GRAPHQL_RESPONSE_JSON)
    json_q, json_specificity = _quality(ranges, JSON)
    if graphql_q <= 0:
        return False
    if graphql_q != json_q:
        return graphql_q > json_q
    return graphql_specificity == 2 and graphql_specificity >= json_specificity


def _media_ranges(accept: str) -> list[tuple[str, float]]:
    ranges = []
    for item in accept.split(","):
        media_range, *params = (part.strip() for part in item.split(";"))
        if not media_range:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges.append((media_range.lower(), q))
    return ranges


def _quality(ranges: list[tuple[str, float]], media_type: str) -> tuple[float, int]:
    """The quality the client gives `media_type`, and how specific the range that gave it is
    (2 the type itself, 1 `type/*`, 0 `*/*`, -1 no range matched)."""
    main_type = media_type.partition("/")[0]
    specificity_of = {media_type: 2, f"{main_type}/*": 1, "*/*": 0}
    best = (0.0, -1)
    for media_range, q in ranges:
        specificity = specificity_of.get(media_range, -1)
        if specificity > best[1]:
            best = (q, specificity)
    return best


def is_request_error(result: ExecutionResult) -> bool:
    """Whether the operation failed before execution: parsing, validation or coercing the
    variables. Errors raised while resolving fields carry a path (and leave `data` as an object,
    or null when a non-null field failed); these have neither."""
    if isinstance(result, PreExecutionError):
        return True
    return (
        result.data is None
        and bool(result.errors)
        and all(error.path is None for error in result.errors or ())
    )


def is_unauthenticated(result: ExecutionResult) -> bool:
    """Whether the operation was refused for its token, before its document was even parsed."""
    return isinstance(result, PreExecutionError) and any(
        (error.extensions or {}).get("code") == Unauthenticated.code
        for error in result.errors or ()
    )


async def _errors_as_results(results: AsyncGenerator[Any, None]) -> AsyncGenerator[Any, None]:
    """The stream's results; an exception that escapes it becomes a last result with the error,
    masked like every unexpected error."""
    try:
        async with aclosing(results):
            async for result in results:
                yield result
    except Exception as exc:
        error = exc if isinstance(exc, GraphQLError) else GraphQLError(str(exc), original_error=exc)
        if is_unexpected(error):
            logger.error("Error in a GraphQL stream", exc_info=exc)
            error = GraphQLError(UNEXPECTED_ERROR, nodes=error.nodes, path=error.path)
        yield PreExecutionError(data=None, errors=[error])


def _authorization_param(params: Any) -> object:
    if not isinstance(params, dict):
        return None
    for key, value in params.items():
        if isinstance(key, str) and key.lower() == "authorization":
            return value
    return None
