"""The `jobql` command: web, worker, token, schema and dev."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from jobql.settings import MissingSecretKey, Settings


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.run(args, extra))
    except MissingSecretKey as exc:
        print(f"jobql {args.command}: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobql", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    web = commands.add_parser("web", help="serve the GraphQL API with uvicorn")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8000)
    web.add_argument("--workers", type=int, default=1)
    web.set_defaults(run=_web)

    worker = commands.add_parser(
        "worker", help="run a Celery worker (other options go to celery worker)"
    )
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(run=_worker)

    token = commands.add_parser("token", help="print a bearer token")
    token.add_argument("--user", required=True, help="the user id (the token's sub)")
    token.add_argument(
        "--scope",
        action="append",
        default=[],
        help="a scope to grant, e.g. email:send (repeatable)",
    )
    token.add_argument("--ttl", type=int, default=None, help="seconds until it expires")
    token.set_defaults(run=_token)

    schema = commands.add_parser("schema", help="print the GraphQL schema (SDL)")
    schema.set_defaults(run=_schema)

    dev = commands.add_parser("dev", help="run everything on this machine, for development")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(run=_dev)
    return parser


def _web(args: argparse.Namespace, extra: list[str]) -> int:
    import uvicorn

    Settings().require_secret_key()
    uvicorn.run(
        "jobql.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers
    )
    return 0


def _worker(args: argparse.Namespace, extra: list[str]) -> int:
    Settings().require_secret_key()
    from jobql.tasks.celery import app

    app.worker_main(["worker", f"--loglevel={args.loglevel}", *extra])
    return 0


def _token(args: argparse.Namespace, extra: list[str]) -> int:
    from jobql.auth import issue_token

    scopes = tuple(scope for value in args.scope for scope in value.split())
    ttl = timedelta(seconds=args.ttl) if args.ttl else None
    print(issue_token(Settings().require_secret_key(), args.user, scopes, ttl))
    return 0


def _schema(args: argparse.Namespace, extra: list[str]) -> int:
    from jobql.schema import build_schema

    print(build_schema().as_str())
    return 0


def _dev(args: argparse.Namespace, extra: list[str]) -> int:
    from jobql.dev import run_dev

    return run_dev(args.host, args.port)
