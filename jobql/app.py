"""Builds the web application: GraphQL at /graphql (HTTP and WebSocket), result files at
/media (public) and /files (each job's owner only)."""

from __future__ import annotations

import asyncio
import gc
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.responses import FileResponse
from starlette.staticfiles import StaticFiles
from strawberry.subscriptions import (
    GRAPHQL_SSE_PROTOCOL,
    GRAPHQL_TRANSPORT_WS_PROTOCOL,
    GRAPHQL_WS_PROTOCOL,
    MULTIPART_SUBSCRIPTION_PROTOCOL,
)

from jobql.admission import Admission
from jobql.auth import TokenVerifier
from jobql.connections import create_redis
from jobql.downloads import PrivateFiles
from jobql.epoch import watch_for_data_loss
from jobql.files import PRIVATE_URL, PUBLIC_URL
from jobql.graphql_app import JobqlGraphQL
from jobql.health import Health, MediaProbe, healthz
from jobql.jobs import DEFAULT_QUEUE
from jobql.listing import Cursors, JobListing
from jobql.logs import configure_logging, route_uvicorn_logs_to_root
from jobql.metrics import ClusterMetrics, WebMetrics
from jobql.multipart import FormLimits
from jobql.provider_keys import ProviderKeys
from jobql.quotas import UserQuota
from jobql.rate_limit import MutationRateLimit
from jobql.reclaim import Reclaimer
from jobql.registry import load_kinds
from jobql.request_guard import RequestGuard
from jobql.resolvers.context import Services
from jobql.schema import build_schema
from jobql.security_headers import SecurityHeaders, page_policy
from jobql.settings import Settings
from jobql.storage import create_storage
from jobql.store import JobStore
from jobql.watcher import JobWatcher

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.types import ASGIApp, Receive, Scope, Send

GRAPHQL_PATH = "/graphql"
STATIC_DIR = Path(__file__).parent / "static"
# WebSocket (both protocols), Server-Sent Events and multipart HTTP, for every kind of client.
SUBSCRIPTION_PROTOCOLS = (
    GRAPHQL_TRANSPORT_WS_PROTOCOL,
    GRAPHQL_WS_PROTOCOL,
    GRAPHQL_SSE_PROTOCOL,
    MULTIPART_SUBSCRIPTION_PROTOCOL,
)
# The largest JSON body, and the largest WebSocket message (uvicorn's `ws_max_size`).
MAX_JSON_BODY_BYTES = 256 * 1024
# A request leaves some 60 objects in reference cycles (graphql-core's execution state)
# for the collector. The default threshold (700) collects every few requests; a young
# generation of 20,000 takes 8 ms to collect, long enough to show in tail latency.
# 3,000 collects in about 1 ms.
GC_THRESHOLD = 3_000


async def job_page() -> FileResponse:
    """A page that uploads a photo and shows its job happen, through the public API."""
    return FileResponse(STATIC_DIR / "index.html")


class GraphQLFirst:
    """Sends `/graphql` straight to the GraphQL app, and everything else to the site.

    A subscription's WebSocket stays open as long as it does, and each layer of a
    FastAPI app it passed through (error pages, exception handlers, the router) would
    keep a frame of its own for all that time: about a tenth of what a subscription
    costs the server. The same layers are a tenth of a mutation's time.
    """

    def __init__(self, graphql: ASGIApp, site: ASGIApp) -> None:
        self.graphql = graphql
        self.site = site

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" and scope["path"] == GRAPHQL_PATH:
            await self.graphql(scope, receive, send)
        else:
            await self.site(scope, receive, send)


def create_app(settings: Settings | None = None) -> SecurityHeaders:
    settings = settings or Settings()
    secret_key = settings.require_secret_key()
    configure_logging(settings.log_json)
    route_uvicorn_logs_to_root()
    kinds = load_kinds(settings)
    redis = create_redis(settings)
    provider = ProviderKeys(settings.jwks_url) if settings.jwks_url else None
    tokens = TokenVerifier(
        secret_key,
        require_exp=not settings.allow_non_expiring_tokens,
        provider=provider,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    storage = create_storage(settings)
    store = JobStore(
        redis,
        result_expires=settings.result_expires,
        timeout=settings.redis_timeout,
        queue_ttl=settings.queue_ttl,
    )
    services = Services(
        settings=settings,
        tokens=tokens,
        store=store,
        listing=JobListing(store.pipeline, Cursors(secret_key), settings.result_expires),
        watcher=JobWatcher(settings.redis_url, timeout=settings.redis_timeout),
        rate_limit=MutationRateLimit(
            redis, settings.redis_url, settings.rate_limit_per_minute, settings.redis_timeout
        ),
        kinds=kinds,
        subscriptions=UserQuota(settings.max_subscriptions_per_user, "subscriptions"),
        connections=UserQuota(settings.max_connections_per_user, "WebSocket connections"),
        reclaimer=Reclaimer(),
        metrics=WebMetrics(),
        storage=storage,
    )
    storage.prepare(kinds.file_areas)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # What start-up built lives as long as the process: keep the collector from
        # walking it again and again (collections of it are what long pauses are made of).
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
        if provider is not None:
            await provider.refresh()
        data_loss = asyncio.create_task(
            watch_for_data_loss(store, services.watcher, settings.data_loss_check),
            name="jobql-data-loss",
        )
        yield
        data_loss.cancel()
        await services.watcher.close()
        await redis.aclose()

    graphql = JobqlGraphQL(
        build_schema(
            kinds,
            introspection=settings.introspection,
            on_refusal=services.metrics.refused_subscription,
        ),
        services=services,
        multipart_uploads_enabled=True,
        subscription_protocols=SUBSCRIPTION_PROTOCOLS,
        connection_init_wait_timeout=timedelta(seconds=settings.ws_init_timeout),
        # JOBQL_MAX_SUBSCRIPTIONS_PER_USER caps them, over every connection, with a code.
        max_subscriptions_per_connection=None,
        upload_limits=FormLimits(max_file_bytes=settings.max_upload_bytes),
    )
    # No REST routes to document: no /docs, /redoc or /openapi.json.
    app = FastAPI(title="jobql", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    health = Health(redis, MediaProbe(storage))
    cluster = ClusterMetrics(redis, queues=(DEFAULT_QUEUE,))
    app.add_api_route("/healthz", healthz(settings.run_id), include_in_schema=False)
    app.add_api_route("/readyz", health.readyz, include_in_schema=False)
    app.add_api_route("/metrics", services.metrics.exposition, include_in_schema=False)
    app.add_api_route("/metrics/cluster", cluster.exposition, include_in_schema=False)
    for area in kinds.file_areas:
        folder = storage.public_folder(area)
        if folder is not None:
            app.mount(
                f"{PUBLIC_URL}/{area.folder}", StaticFiles(directory=folder), name=area.folder
            )
    private = PrivateFiles(storage, kinds.file_areas, services.tokens, services.store)
    app.add_route(
        f"{PRIVATE_URL}/{{folder}}/{{job_id}}/{{name}}",
        private.download,
        methods=["GET"],
        include_in_schema=False,
    )
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_api_route("/", job_page, include_in_schema=False)
    guarded = RequestGuard(
        graphql,
        max_upload_bytes=settings.max_upload_bytes,
        max_other_bytes=MAX_JSON_BODY_BYTES,
        tokens=tokens,
        uploads_per_user=UserQuota(settings.max_uploads_per_user, "uploads"),
        max_uploads=settings.max_uploads,
        request_timeout=settings.request_timeout,
        min_upload_rate=settings.min_upload_rate,
    )
    policy = page_policy([STATIC_DIR / "index.html", STATIC_DIR / "graphiql.html"])
    return SecurityHeaders(GraphQLFirst(Admission(guarded, settings.max_connections), app), policy)
