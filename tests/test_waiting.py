"""wait_until: returns the predicate's first truthy value, or says what it waited for and how long."""

from __future__ import annotations

import itertools

import pytest

from flip_imaging.waiting import WaitTimeout, wait_until


def test_returns_the_first_truthy_value() -> None:
    calls = itertools.count()
    assert wait_until(lambda: next(calls) >= 3 and "ready", timeout=5, interval=0.001) == "ready"


def test_times_out_with_what_it_waited_for() -> None:
    with pytest.raises(WaitTimeout, match=r"timed out after 0\.05 s waiting for the moon"):
        wait_until(lambda: None, timeout=0.05, interval=0.01, what="the moon")
