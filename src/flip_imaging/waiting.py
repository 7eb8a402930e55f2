"""Polling for a condition with a deadline: the demo, benchmarks and tests wait on a live server."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class WaitTimeout(TimeoutError):
    """The condition was not met in time; the message says what was awaited and for how long."""


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1,
               what: str = "a condition") -> Any:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy, and return
    that; :class:`WaitTimeout` once ``timeout`` seconds have passed (the predicate runs at least once)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
