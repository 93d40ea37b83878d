"""The article's design, web side: a Flask app under gunicorn with REST routes, and a
status route that the browser polls."""

from __future__ import annotations

import uuid
from typing import Any

from celery.result import AsyncResult
from flask import Flask, jsonify, request

from bench.reference.tasks import MEDIA, process_avatar, send_welcome_email
from bench.reference.tasks import app as celery_app

app = Flask("reference-web")


@app.post("/api/welcome-email")
def welcome_email() -> Any:
    body = request.get_json()
    task = send_welcome_email.delay(body["email"], body["username"])
    return jsonify({"task_id": task.id}), 202


@app.post("/api/avatar")
def avatar() -> Any:
    incoming = MEDIA / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    path = incoming / f"{uuid.uuid4()}.upload"
    request.files["file"].save(path)
    task = process_avatar.delay(str(path))
    return jsonify({"task_id": task.id}), 202


@app.get("/api/status/<task_id>")
def status(task_id: str) -> Any:
    result: AsyncResult = AsyncResult(task_id, app=celery_app)  # type: ignore[type-arg]
    info = result.info if isinstance(result.info, dict) else {}
    return jsonify({"state": result.state, "progress": info.get("progress"), "result": info})
