"""Serves a private result file to the owner of its job, and 404 to anyone else.

`GET /files/<folder>/<job id>/<name>` with the same `Authorization: Bearer <token>` the API
takes. No token, a bad one, someone else's job, an expired job and a missing file all
answer the same 404: the answer must not tell a stranger which files exist.
"""

from __future__ import annotations

import asyncio
import mimetypes
from typing import TYPE_CHECKING
from urllib.parse import quote

from redis.exceptions import RedisError
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from jobql.auth import InvalidToken
from jobql.files import BadFileName
from jobql.jobs import is_job_id
from jobql.storage import StorageUnavailable

if TYPE_CHECKING:
    from starlette.requests import Request

    from jobql.auth import TokenVerifier
    from jobql.files import FileArea
    from jobql.storage import Storage
    from jobql.store import JobStore


class PrivateFiles:
    def __init__(
        self,
        storage: Storage,
        areas: list[FileArea],
        tokens: TokenVerifier,
        store: JobStore,
    ) -> None:
        self.storage = storage
        self.areas = {area.folder: area for area in areas if area.private}
        self.tokens = tokens
        self.store = store

    async def download(self, request: Request) -> Response:
        folder = request.path_params["folder"]
        job_id = request.path_params["job_id"]
        name = request.path_params["name"]
        area = self.areas.get(folder)
        if area is None or not is_job_id(job_id):
            return _not_found()
        try:
            user_id = self.tokens.principal(request.headers.get("authorization")).user_id
            path = self.storage.local_path(area, job_id, name)
        except (InvalidToken, BadFileName):
            return _not_found()
        try:
            job = await self.store.get(job_id, owner=user_id)
        except (RedisError, TimeoutError):
            return JSONResponse({"error": "The job store is unreachable."}, status_code=503)
        if job is None:
            return _not_found()
        headers = {"Cache-Control": "private, no-store"}
        try:
            if path is not None:
                if not await asyncio.to_thread(self.storage.exists, area, job_id, name):
                    return _not_found()
                return FileResponse(path, filename=name, headers=headers)
            # Not on this host: read from the store (a result file is small), in a thread.
            file = await asyncio.to_thread(self.storage.open_file, area, job_id, name)
        except FileNotFoundError:
            return _not_found()
        except StorageUnavailable:
            return JSONResponse({"error": "The media store is unreachable."}, status_code=503)
        with file:
            content = file.read()
        disposition = f"attachment; filename*=utf-8''{quote(name)}"
        return Response(
            content,
            media_type=_media_type(name),
            headers=headers | {"Content-Disposition": disposition},
        )


def _media_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _not_found() -> Response:
    return PlainTextResponse("Not Found", status_code=404)
