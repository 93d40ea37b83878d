from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from jobql.auth import issue_token
from jobql.redis_server import RedisServer
from jobql.s3_server import BUCKET, REGION, S3Server
from jobql.settings import Settings
from tests.support import Process, SmtpServer, Stack, WebServer, start_web, start_worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

SECRET_KEY = "test-secret-key-that-is-long-enough-for-hs256"


def token(user: str, *scopes: str) -> str:
    return issue_token(SECRET_KEY, user, scopes)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, that it may stop and start."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def make_settings(
    redis_server: RedisServer, smtp_server: SmtpServer, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Settings]:
    """Settings for one test setup; every value explicit, nothing read from the environment."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "redis_url": redis_server.url,
            "media_root": tmp_path_factory.mktemp("media"),
            "secret_key": SECRET_KEY,
            "mail_server": "127.0.0.1",
            "mail_port": smtp_server.port,
            "mail_use_tls": False,
            "mail_username": None,
            "mail_password": None,
            "mail_default_sender": "jobql <noreply@jobql.test>",
            "mail_timeout": 5.0,
            "mail_max_retries": 3,
            "mail_retry_backoff": 0.5,
            "site_name": "Testsite",
            "result_expires": 3600,
            "redis_timeout": 1.0,
            "introspection": True,
            **overrides,
        }
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def worker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_worker(settings, tmp_path_factory.mktemp("logs") / "worker.log")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def web(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    server = start_web(settings, tmp_path_factory.mktemp("logs") / "web.log")
    yield server
    server.process.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS), its credentials in the standard AWS variables, which
    this process and every child it starts read."""
    server = S3Server()
    server.start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", server.credentials.access_key_id)
        env.setenv("AWS_SECRET_ACCESS_KEY", server.credentials.secret_access_key)
        yield server
    server.close()


@pytest.fixture(scope="session")
def make_s3_settings(
    make_settings: Callable[..., Settings], s3_server: S3Server
) -> Callable[..., Settings]:
    """Settings for media in the S3 server's bucket, under a prefix of their own."""

    def make(prefix: str, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "storage": "s3",
            "s3_bucket": BUCKET,
            "s3_endpoint_url": s3_server.endpoint_url,
            "s3_region": REGION,
            "s3_prefix": prefix,
            **overrides,
        }
        return make_settings(**values)

    return make


@pytest.fixture(scope="session")
def s3_redis_server() -> Iterator[RedisServer]:
    """The S3 stack's own Redis: its workers must not take the filesystem stack's jobs."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def s3_settings(
    make_s3_settings: Callable[..., Settings], s3_redis_server: RedisServer
) -> Settings:
    return make_s3_settings("session", redis_url=s3_redis_server.url)


@pytest.fixture(scope="session")
def s3_worker(s3_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_worker(s3_settings, tmp_path_factory.mktemp("logs") / "s3-worker.log")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def s3_web(s3_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    server = start_web(s3_settings, tmp_path_factory.mktemp("logs") / "s3-web.log")
    yield server
    server.process.stop()


@pytest.fixture
def make_stack(
    make_settings: Callable[..., Settings], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Stack]]:
    """Build a private jobql (Redis, SMTP, settings); the test starts workers and web."""
    stacks: list[Stack] = []

    def make(persistent_redis: bool = False, **overrides: object) -> Stack:
        redis = RedisServer(persistent=persistent_redis)
        redis.start()
        smtp = SmtpServer()
        smtp.start()
        settings = make_settings(**{"redis_url": redis.url, "mail_port": smtp.port, **overrides})
        stack = Stack(settings, redis, smtp, tmp_path_factory.mktemp("stack"))
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()
