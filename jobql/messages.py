"""Celery task messages, built without Celery so the web process can queue them itself.

A task is queued by pushing one JSON envelope onto the queue's Redis list, as
Kombu's Redis transport does: Celery's message protocol v2
(https://docs.celeryq.dev/en/stable/internals/protocol.html) wrapped the way
Kombu's virtual transport stores it. Doing it here lets the web process write
the job record and the message in one Redis transaction on its own asyncio
connection, with no thread and no blocking call.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from typing import TYPE_CHECKING, Any

import orjson

from jobql.jobs import arguments_repr

if TYPE_CHECKING:
    from datetime import datetime

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"


def task_message(
    task_name: str,
    task_id: str,
    kwargs: dict[str, Any],
    queue: str,
    eta: datetime | None = None,
    expires: datetime | None = None,
) -> str:
    """The envelope Kombu's Redis transport would push for
    `send_task(task_name, kwargs=kwargs, eta=eta, expires=expires)`.

    Arguments go by name: the worker calls the task with them, so a payload that does not
    fit the task's signature fails as a TypeError, never as arguments taken in the wrong order.
    """
    # Byte for byte the body Celery's own JSON serializer writes.
    body = json.dumps(
        [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    ).encode()
    argsrepr, kwargsrepr = arguments_repr(kwargs)
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task_name,
        "id": task_id,
        "shadow": None,
        "eta": eta.isoformat() if eta else None,
        "expires": expires.isoformat() if expires else None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": argsrepr,
        "kwargsrepr": kwargsrepr,
        "origin": _ORIGIN,
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    properties = {
        "correlation_id": task_id,
        "reply_to": "",
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        # What a worker files the message under while it holds it: the job id, so that
        # recovery can ask whether a job's message is held without reading anything else.
        "delivery_tag": task_id,
    }
    return orjson.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        }
    ).decode()
