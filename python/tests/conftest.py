"""Shared helpers: several Python clients in threads against one
in-process server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Sequence, TypeVar

T = TypeVar("T")


def in_threads(calls: Sequence[Callable[[], T]]) -> List[object]:
    """Runs every call at once, one thread each (a round needs its clients
    in the lobby together); returns each call's result or exception."""

    def run(call: Callable[[], T]) -> object:
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - the test inspects it
            return e

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))
