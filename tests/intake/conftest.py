"""Fixtures for the DICOM intake: an admin HTTP client on the live server, a receiver on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from intake_helpers import ADMIN_AUTH, Receiver

from flip_imaging.netutil import free_port


@pytest.fixture
def admin_http(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, auth=ADMIN_AUTH, timeout=120) as c:
        yield c


@pytest.fixture
def receiver(live_server: str, admin_http: httpx.Client) -> Receiver:
    """A receiver created through the API on a free port (quiet period from the test settings: 1 s)."""
    port = free_port()
    r = admin_http.post("/xapi/dicomscp", json={"aeTitle": "FLIP", "port": port})
    assert r.status_code == 200, r.text
    return Receiver(live_server, "FLIP", port, r.json()["id"], admin_http)
