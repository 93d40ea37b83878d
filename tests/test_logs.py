"""Where uvicorn's log lines go once the app is built."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

from jobql.logs import route_uvicorn_logs_to_root

if TYPE_CHECKING:
    from collections.abc import Iterator

ACCESS = logging.getLogger("uvicorn.access")


@pytest.fixture(autouse=True)
def restore_access_logger() -> Iterator[None]:
    handlers, propagate = list(ACCESS.handlers), ACCESS.propagate
    yield
    ACCESS.handlers[:], ACCESS.propagate = handlers, propagate


def test_access_log_goes_through_the_root_logger() -> None:
    ACCESS.handlers[:], ACCESS.propagate = [logging.StreamHandler()], False  # uvicorn's own
    route_uvicorn_logs_to_root()
    assert ACCESS.handlers == []
    assert ACCESS.propagate


def test_access_log_turned_off_stays_off() -> None:
    ACCESS.handlers[:], ACCESS.propagate = [], False  # what uvicorn does for --no-access-log
    route_uvicorn_logs_to_root()
    # uvicorn writes access lines only if the logger has somewhere to write them.
    assert not ACCESS.hasHandlers()
