"""The `jobql` command: web, worker, token, schema and dev; and a client of a running server
(a command per kind of job that has one, and jobs get)."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from jobql.auth import DEFAULT_TTL
from jobql.jobs import JobState
from jobql.listing import MAX_FIRST, MAX_WAIT_SECONDS
from jobql.registry import BadKindModule, KindsDisagree, load_kinds
from jobql.settings import MissingSecretKey, Settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from rich.console import Console

    from jobql.client import JobData, JobqlClient
    from jobql.kinds import Command
    from jobql.registry import Kinds

# How a client command ended: its exit status.
EXIT_OK = 0  # SUCCESS, or (without --wait) accepted
EXIT_JOB_FAILED = 1  # FAILURE or REVOKED; no such job (`jobs get`, `cancel`, `retry`, `wait`)
EXIT_USAGE = 2  # bad arguments, or a GraphQL error the server answered with
EXIT_UNAVAILABLE = 3  # cannot connect, or SERVICE_UNAVAILABLE or OVERLOADED
EXIT_NOT_DONE = 4  # `jobs wait`: the job had not ended when the wait did

DEFAULT_LIST_LIMIT = 20


def main(argv: list[str] | None = None) -> int:
    try:
        kinds = load_kinds(Settings())
    except BadKindModule as exc:
        print(f"jobql: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        # Each error's own message: the whole error would quote the settings' values.
        for error in exc.errors():
            name = "JOBQL_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"jobql: {name + ': ' if error['loc'] else ''}{error['msg']}", file=sys.stderr)
        return 2
    parser = _parser(kinds)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.kinds = kinds
    try:
        return int(args.run(args, extra))
    except (MissingSecretKey, KindsDisagree) as exc:
        print(f"jobql {args.command}: {exc}", file=sys.stderr)
        return 2


def _parser(kinds: Kinds) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobql", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    web = commands.add_parser("web", help="serve the GraphQL API with uvicorn")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8000)
    web.add_argument(
        "--workers", type=int, default=1, help="processes, handed new connections in turn"
    )
    web.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log every request (default: on)",
    )
    web.set_defaults(run=_web)

    worker = commands.add_parser(
        "worker", help="run a Celery worker (other options go to celery worker)"
    )
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(run=_worker)

    purge = commands.add_parser(
        "purge", help="empty the queue and end every job waiting on it REVOKED"
    )
    purge.add_argument("--queue", default=None, help="the queue (default: celery)")
    purge.add_argument("-f", "--force", action="store_true", help="do not ask first")
    purge.set_defaults(run=_purge)

    token = commands.add_parser("token", help="print a bearer token")
    token.add_argument("--user", required=True, help="the user id (the token's sub)")
    token.add_argument(
        "--scope",
        action="append",
        default=[],
        help="a scope to grant, e.g. email:send (repeatable)",
    )
    token.add_argument(
        "--ttl",
        type=int,
        default=int(DEFAULT_TTL.total_seconds()),
        help="seconds until it expires (default: 3600)",
    )
    token.set_defaults(run=_token)

    schema = commands.add_parser("schema", help="print the GraphQL schema (SDL)")
    schema.set_defaults(run=_schema)

    dev = commands.add_parser("dev", help="run everything on this machine, for development")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument(
        "--storage",
        choices=["filesystem", "s3"],
        default="filesystem",
        help="where media goes; s3 starts a private SeaweedFS unless JOBQL_S3_ENDPOINT_URL is set",
    )
    dev.set_defaults(run=_dev)

    for kind in kinds:
        if kind.command is None:
            continue
        command = commands.add_parser(kind.command.name, help=kind.command.help)
        kind.command.add_arguments(command)
        _client_options(command)
        command.set_defaults(run=_queue, queue_command=kind.command)

    jobs = commands.add_parser("jobs", help="look at jobs on a running server")
    jobs_commands = jobs.add_subparsers(
        dest="jobs_command", metavar="{get,list,cancel,retry,wait}", required=True
    )
    get = jobs_commands.add_parser("get", help="print a job as JSON (exit 1 if there is none)")
    get.add_argument("id", help="the job's id")
    _client_options(get, wait=False)
    get.set_defaults(run=_jobs_get)
    listed = jobs_commands.add_parser("list", help="your jobs, newest first, one a line")
    listed.add_argument("--state", choices=[state.value for state in JobState], type=str.upper)
    listed.add_argument("--kind", choices=[kind.graphql_name for kind in kinds], type=str.upper)
    listed.add_argument(
        "--limit", type=_positive, default=DEFAULT_LIST_LIMIT, help="at most this many (20)"
    )
    _client_options(listed, wait=False)
    listed.set_defaults(run=_jobs_list)
    cancel = jobs_commands.add_parser(
        "cancel", help="cancel a job; exit 0 if it ends REVOKED, 1 if it had ended otherwise"
    )
    cancel.add_argument("id", help="the job's id")
    _client_options(cancel, wait=False)
    cancel.set_defaults(run=_jobs_cancel)
    retry = jobs_commands.add_parser(
        "retry", help="queue again a job that failed (retryable) or was cancelled"
    )
    retry.add_argument("id", help="the job's id")
    _client_options(retry)
    retry.set_defaults(run=_jobs_retry)
    wait = jobs_commands.add_parser(
        "wait", help="wait for a job to end (waitForJob) and print it; exit as --wait does"
    )
    wait.add_argument("id", help="the job's id")
    wait.add_argument(
        "--timeout", type=_wait_seconds, default=30, help="seconds to wait, 1..60 (30)"
    )
    _client_options(wait, wait=False)
    wait.set_defaults(run=_jobs_wait)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _wait_seconds(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_WAIT_SECONDS:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_WAIT_SECONDS}")
    return value


def _client_options(parser: argparse.ArgumentParser, wait: bool = True) -> None:
    parser.add_argument(
        "--url",
        default=None,
        help="the GraphQL API (default: $JOBQL_URL, else http://127.0.0.1:8000/graphql)",
    )
    parser.add_argument("--token", default=None, help="bearer token (default: $JOBQL_TOKEN)")
    if wait:
        parser.add_argument(
            "--wait", action="store_true", help="follow the job until it ends, then print how"
        )


def _web(args: argparse.Namespace, extra: list[str]) -> int:
    from jobql.logs import configure_logging
    from jobql.processes import serve
    from jobql.registry import check_agreement

    settings = Settings()
    settings.require_secret_key()
    check_agreement(settings, "web", args.kinds)
    configure_logging(settings.log_json)
    return serve(args.host, args.port, args.workers, **uvicorn_options(settings, args.access_log))


def uvicorn_options(settings: Settings, access_log: bool = True) -> dict[str, Any]:
    """How `jobql web` runs uvicorn (host, port and workers aside)."""
    from jobql.app import MAX_JSON_BODY_BYTES
    from jobql.http_deadline import header_deadline_protocol

    return {
        "app": "jobql.app:create_app",
        "factory": True,
        "access_log": access_log,
        # Compressing small JSON frames saves little and costs each WebSocket about
        # 40 KiB of zlib state, which is most of what a subscription costs the server.
        "ws_per_message_deflate": False,
        # A ping a minute still finds dead clients; every 20 s, 10,000 clients make 500
        # pings a second, and each one delays whatever else the event loop had to do.
        "ws_ping_interval": 60.0,
        # A WebSocket message is read whole before anyone looks at it: no larger than a body.
        "ws_max_size": MAX_JSON_BODY_BYTES,
        "http": header_deadline_protocol(settings.request_timeout),
    }


def _worker(args: argparse.Namespace, extra: list[str]) -> int:
    Settings().require_secret_key()
    from jobql.tasks.celery import app

    app.worker_main(["worker", f"--loglevel={args.loglevel}", *extra])
    return 0


def _purge(args: argparse.Namespace, extra: list[str]) -> int:
    from redis import Redis

    from jobql.jobs import DEFAULT_QUEUE
    from jobql.tasks.purge import purge_queue

    settings = Settings()
    queue = args.queue or DEFAULT_QUEUE
    if not args.force:
        answer = input(f"End every job waiting on the queue {queue!r} REVOKED? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return EXIT_OK
    with Redis.from_url(settings.redis_url) as client:
        purged = purge_queue(client, settings.result_expires, queue=queue)
    print(f"Took {purged.messages} messages off {queue!r}; {purged.revoked} jobs ended REVOKED.")
    return EXIT_OK


def _token(args: argparse.Namespace, extra: list[str]) -> int:
    from jobql.auth import issue_token

    scopes = tuple(scope for value in args.scope for scope in value.split())
    if args.ttl <= 0:
        print("jobql token: --ttl must be a positive number of seconds", file=sys.stderr)
        return 2
    ttl = timedelta(seconds=args.ttl)
    print(issue_token(Settings().require_secret_key(), args.user, scopes, ttl))
    return 0


def _schema(args: argparse.Namespace, extra: list[str]) -> int:
    from jobql.schema import build_schema

    print(build_schema(args.kinds).as_str())
    return 0


def _dev(args: argparse.Namespace, extra: list[str]) -> int:
    from jobql.dev import run_dev

    return run_dev(args.host, args.port, args.storage)


def _queue(args: argparse.Namespace, extra: list[str]) -> int:
    """A kind's command: queue its job (and with --wait, follow it)."""
    command: Command = args.queue_command
    problem = command.check(args)
    if problem is not None:
        print(f"jobql {args.command}: {problem}", file=sys.stderr)
        return EXIT_USAGE

    async def run(client: JobqlClient) -> int:
        job = await command.queue(client, args)
        return await _accepted(client, job, args.wait)

    return _run_client(args, run)


def _jobs_list(args: argparse.Namespace, extra: list[str]) -> int:
    async def run(client: JobqlClient) -> int:
        left, after = args.limit, None
        while left > 0:
            jobs, after = await client.list_jobs(
                min(left, MAX_FIRST), after, state=args.state, kind=args.kind
            )
            for job in jobs:
                print(f"{job['id']}  {job['kind']:<14} {job['state']:<8} {job['createdAt']}")
            left -= len(jobs)
            if after is None:
                break
        return EXIT_OK

    return _run_client(args, run)


def _jobs_cancel(args: argparse.Namespace, extra: list[str]) -> int:
    async def run(client: JobqlClient) -> int:
        job = await client.cancel_job(args.id)
        if job is None:
            print(f"jobql jobs cancel: no job {args.id} (none such, or not yours)", file=sys.stderr)
            return EXIT_JOB_FAILED
        print(f"job {job['id']} {job['state']}")
        if job["state"] == "REVOKED":
            return EXIT_OK
        # It ended before the cancellation could stop it (an email already sent).
        return EXIT_JOB_FAILED

    return _run_client(args, run)


def _jobs_retry(args: argparse.Namespace, extra: list[str]) -> int:
    async def run(client: JobqlClient) -> int:
        from jobql.client import NOT_FOUND, ApiError

        try:
            job = await client.retry_job(args.id)
        except ApiError as exc:
            if exc.code != NOT_FOUND:
                raise
            print(f"jobql jobs retry: no job {args.id} (none such, or not yours)", file=sys.stderr)
            return EXIT_JOB_FAILED
        return await _accepted(client, job, args.wait)

    return _run_client(args, run)


def _jobs_wait(args: argparse.Namespace, extra: list[str]) -> int:
    async def run(client: JobqlClient) -> int:
        job = await client.wait_for_job(args.id, args.timeout)
        if job is None:
            print(f"jobql jobs wait: no job {args.id} (none such, or not yours)", file=sys.stderr)
            return EXIT_JOB_FAILED
        print(f"job {job['id']} {job['state']}")
        if not job["done"]:
            print(f"jobql jobs wait: not done after {args.timeout} s", file=sys.stderr)
            return EXIT_NOT_DONE
        return _report(client, job)

    return _run_client(args, run)


def _jobs_get(args: argparse.Namespace, extra: list[str]) -> int:
    import json

    async def run(client: JobqlClient) -> int:
        job = await client.get_job(args.id)
        if job is None:
            print(
                f"jobql jobs get: no job {args.id} (none such, expired, or not yours)",
                file=sys.stderr,
            )
            return EXIT_JOB_FAILED
        print(json.dumps(job, indent=2))
        return EXIT_OK

    return _run_client(args, run)


def _run_client(args: argparse.Namespace, run: Callable[[JobqlClient], Awaitable[int]]) -> int:
    """Run one client command against the server; map how it ended to the exit status."""
    import asyncio

    from jobql.client import (
        DEFAULT_URL,
        OVERLOADED,
        SERVICE_UNAVAILABLE,
        ApiError,
        ClientError,
        JobqlClient,
        Unreachable,
    )

    name = " ".join(filter(None, ["jobql", args.command, getattr(args, "jobs_command", None)]))
    url = args.url or os.environ.get("JOBQL_URL") or DEFAULT_URL
    token = args.token or os.environ.get("JOBQL_TOKEN") or None

    async def main() -> int:
        async with JobqlClient(url, token, kinds=args.kinds) as client:
            return await run(client)

    try:
        return asyncio.run(main())
    except ApiError as exc:
        print(f"{name}: {exc.code}: {exc.message}{_retry_hint(exc.extensions)}", file=sys.stderr)
        unavailable = exc.code in (SERVICE_UNAVAILABLE, OVERLOADED)
        return EXIT_UNAVAILABLE if unavailable else EXIT_USAGE
    except Unreachable as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ClientError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{name}: interrupted (a job already queued goes on)", file=sys.stderr)
        return 130


def _retry_hint(extensions: dict[str, Any]) -> str:
    retry_after = extensions.get("retryAfter")
    return f" (retry after {retry_after} s)" if retry_after is not None else ""


async def _accepted(client: JobqlClient, job: JobData, wait: bool) -> int:
    """Print the job the server accepted; with `wait`, follow it and print how it ended."""
    print(f"job {job['id']} {job['state']}", flush=True)
    if not wait:
        return EXIT_OK
    from rich.console import Console

    console = Console(stderr=True)
    final = await _follow(client, job, console)
    if final is not job:
        print(f"job {final['id']} {final['state']}")
    return _report(client, final)


async def _follow(client: JobqlClient, job: JobData, console: Console) -> JobData:
    """Follow the job's subscription with a progress bar (on stderr) until it is done."""
    from contextlib import aclosing

    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    final = job
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(_describe(job), total=None)
        async with aclosing(client.follow(str(job["id"]))) as events:
            async for final in events:
                percent = final.get("progress")
                if final["state"] == "SUCCESS":
                    percent = 100
                progress.update(
                    bar,
                    description=_describe(final),
                    total=None if percent is None else 100,
                    completed=percent or 0,
                )
                if final["done"]:
                    break
    return final


def _describe(job: JobData) -> str:
    return f"{str(job['kind']).lower().replace('_', ' ')} {job['state']}"


def _report(client: JobqlClient, job: JobData) -> int:
    """Print a finished job's result (stdout) or error (stderr); its exit status."""
    if not job["done"]:
        print(f"job {job['id']}: the server stopped sending before it ended", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if job["state"] == "SUCCESS":
        for line in client.describe(job):
            print(line)
        return EXIT_OK
    error = job.get("error") or {}
    retry = " (it may succeed if tried again)" if error.get("retryable") else ""
    code = error.get("code", job["state"])
    message = error.get("message", "the job did not succeed")
    print(f"error: {code}: {message}{retry}", file=sys.stderr)
    return EXIT_JOB_FAILED
