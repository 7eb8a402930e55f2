"""Small network helpers shared by the demo, the benchmarks and the tests."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
