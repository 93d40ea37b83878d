"""A user's jobs, newest first, a page at a time: the web process's read of the owner index.

A page is one Redis script (one round trip, shared with other requests' commands by
`AutoPipeline`): it walks the owner's index down from the cursor in batches, reads each
entry's record (and, when a state is asked for or the job is to be returned, its meta),
and stops after `first` matches and one more (which tells whether there is a next
page), or after `SCAN_BUDGET` entries, whichever comes first. What a page costs is
bounded by that budget, whatever the number of jobs the owner has; a filtered page that
runs out of budget answers with what it found and a cursor to go on from.

Cursors are opaque: the position (score and id) of the last entry examined, signed with
a key derived from the secret key and bound to the owner, so that a cursor cannot be
forged, altered or used by another user.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobql.connections import text
from jobql.jobs import (
    META_PREFIX,
    RECORD_FIELDS,
    RECORD_PREFIX,
    JobSnapshot,
    is_job_id,
    load_meta,
    owner_key,
    snapshot,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from jobql.connections import AutoPipeline

MAX_FIRST = 100
MAX_WAIT_SECONDS = 60  # `waitForJob(timeoutSeconds:)` at most
SCAN_BUDGET = 200  # index entries a page examines at most: about 1 ms of Redis time
BATCH = 100  # index entries read from the index at a time
_CURSOR_CONTEXT = b"jobql jobs cursor v1"

# KEYS: the owner index. ARGV: the highest score to read ('+inf' or a cursor's), the id
# the cursor stopped at ('' for none), the lowest score still kept, first, the scan
# budget, the batch size, the state asked for ('' for any), the owner, the record and
# meta key prefixes, then the kinds to list. Returns whether there may be more, the
# position (score, id) to go on from, then for each match its id, score, record values
# (RECORD_FIELDS, false when absent) and meta.
PAGE_SCRIPT = f"""
local fields = {{{", ".join(f"'{name}'" for name in RECORD_FIELDS)}}}
local nfields = #fields
local max, after, min = ARGV[1], ARGV[2], ARGV[3]
local max_score = tonumber(max)
local first, budget, batch = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local state, owner, record_prefix, meta_prefix = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local kinds = {{}}
for i = 11, #ARGV do kinds[ARGV[i]] = true end
local found, matches, examined = {{}}, 0, 0
local at_score, at_id = '', ''
local offset = 0
while true do
    local entries = redis.call(
        'ZRANGE', KEYS[1], max, min, 'BYSCORE', 'REV', 'LIMIT', offset, batch, 'WITHSCORES')
    if #entries == 0 then return {{0, at_score, at_id, unpack(found)}} end
    offset = offset + #entries / 2
    for i = 1, #entries, 2 do
        local id, score = entries[i], entries[i + 1]
        -- Entries of the cursor's score sort by id, descending: those up to its id are read.
        if after == '' or tonumber(score) < max_score or id < after then
            if examined == budget then return {{1, at_score, at_id, unpack(found)}} end
            examined = examined + 1
            local values = redis.call('HMGET', record_prefix .. id, unpack(fields))
            if values[1] == owner and kinds[values[2]] then
                local meta = redis.call('GET', meta_prefix .. id)
                local status = meta and cjson.decode(meta)['status'] or 'PENDING'
                if state == '' or status == state then
                    if matches == first then return {{1, at_score, at_id, unpack(found)}} end
                    matches = matches + 1
                    table.insert(found, id)
                    table.insert(found, score)
                    for j = 1, nfields do table.insert(found, values[j]) end
                    table.insert(found, meta or false)
                end
            end
            at_score, at_id = score, id
        end
    end
end
"""
assert RECORD_FIELDS[:2] == ("owner", "kind"), "the page script reads owner and kind first"


class BadCursor(ValueError):
    """A cursor this process did not give the caller, or one altered since."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page stopped in an owner's index: an entry's score and job id."""

    score: str
    job_id: str


@dataclass(frozen=True, slots=True)
class Edge:
    cursor: str
    node: JobSnapshot


@dataclass(frozen=True, slots=True)
class PageInfo:
    has_next_page: bool
    end_cursor: str | None  # where the next page starts: past the last edge, or further


@dataclass(frozen=True, slots=True)
class Page:
    edges: list[Edge]
    page_info: PageInfo


class Cursors:
    """Signs and reads page cursors, each bound to its owner."""

    def __init__(self, secret_key: str) -> None:
        self._key = hmac.new(secret_key.encode(), _CURSOR_CONTEXT, hashlib.sha256).digest()

    def dump(self, owner: str, position: Position) -> str:
        body = f"{position.score}|{position.job_id}"
        return _b64(self._mac(owner, body) + body.encode())

    def load(self, owner: str, cursor: str) -> Position:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError) as exc:
            raise BadCursor("not a cursor") from exc
        mac, body_bytes = raw[:16], raw[16:]
        try:
            body = body_bytes.decode()
        except UnicodeDecodeError as exc:
            raise BadCursor("not a cursor") from exc
        if not hmac.compare_digest(mac, self._mac(owner, body)):
            raise BadCursor("not a cursor of yours")
        score, _, job_id = body.partition("|")
        if not is_job_id(job_id) or not _is_score(score):
            raise BadCursor("not a cursor")  # signed: only a change of format gets here
        return Position(score, job_id)

    def _mac(self, owner: str, body: str) -> bytes:
        message = f"{owner}\n{body}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()[:16]


def _is_score(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class JobListing:
    def __init__(self, pipeline: AutoPipeline, cursors: Cursors, result_expires: int) -> None:
        self._pipeline = pipeline
        self._cursors = cursors
        self.result_expires = result_expires

    def position(self, owner: str, cursor: str) -> Position:
        """The position `cursor` names; `BadCursor` if it is not one of `owner`'s."""
        return self._cursors.load(owner, cursor)

    async def page(
        self,
        owner: str,
        first: int,
        after: Position | None,
        kinds: Iterable[str],
        state: str | None = None,
    ) -> Page:
        """Up to `first` of `owner`'s jobs of `kinds` (and `state`), newest first, after
        `after`: one round trip."""
        cutoff = time.time() - self.result_expires
        args = [
            after.score if after else "+inf",
            after.job_id if after else "",
            cutoff,
            first,
            SCAN_BUDGET,
            max(first + 1, BATCH),
            state or "",
            owner,
            RECORD_PREFIX,
            META_PREFIX,
            *kinds,
        ]
        [reply] = await self._pipeline.execute(("EVAL", PAGE_SCRIPT, 1, owner_key(owner), *args))
        more, at_score, at_id, *found = reply
        edges = []
        width = 2 + len(RECORD_FIELDS) + 1
        for start in range(0, len(found), width):
            job_id, score, *values, meta = found[start : start + width]
            record = {
                name: text(value)
                for name, value in zip(RECORD_FIELDS, values, strict=True)
                if value
            }
            here = Position(text(score), text(job_id))
            job = snapshot(here.job_id, record, load_meta(meta) if meta else None)
            edges.append(Edge(self._cursors.dump(owner, here), job))
        end = Position(text(at_score), text(at_id)) if at_id else after
        end_cursor = self._cursors.dump(owner, end) if end else None
        return Page(edges, PageInfo(has_next_page=bool(more), end_cursor=end_cursor))
