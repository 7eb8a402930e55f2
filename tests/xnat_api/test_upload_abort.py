"""A client that dies mid-upload leaves no catalog entry and no stray file (real server, real socket)."""

from __future__ import annotations

import base64
import socket
import time
from urllib.parse import urlparse

import requests
from sqlalchemy import func, select

from flip_imaging.archive.models import File, Resource
from flip_imaging.archive.store import STAGING


def test_aborted_upload_leaves_nothing(live_server, ctx, admin_auth) -> None:
    s = requests.Session()
    s.auth = admin_auth
    assert s.put(f"{live_server}/data/projects/AB1").status_code == 200
    assert s.put(f"{live_server}/data/projects/AB1/subjects/S1").status_code == 200
    eid = s.put(
        f"{live_server}/data/projects/AB1/subjects/S1/experiments/E1",
        params={"xsiType": "xnat:mrSessionData"},
    ).text
    assert s.put(f"{live_server}/data/experiments/{eid}/scans/1", params={"xsiType": "xnat:mrScanData"}).ok

    url = urlparse(live_server)
    token = base64.b64encode(f"{admin_auth[0]}:{admin_auth[1]}".encode()).decode()
    path = f"/data/experiments/{eid}/scans/1/resources/DICOM/files/big.dcm"
    sock = socket.create_connection((url.hostname, url.port))
    sock.sendall(
        (
            f"PUT {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Basic {token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n"
        ).encode()
    )
    chunk = b"\x42" * (1024 * 1024)
    for _ in range(8):  # 8 MiB of the announced 50, then the client dies
        sock.sendall(chunk)
    time.sleep(0.5)
    staging = ctx.archive_root / STAGING
    assert any(p.name.startswith("upload-") for p in staging.iterdir())  # the upload was under way
    sock.close()

    deadline = time.monotonic() + 15
    while any(p.name.startswith("upload-") for p in staging.iterdir()):
        assert time.monotonic() < deadline, "staging file of the aborted upload was not removed"
        time.sleep(0.1)
    with ctx.sessions() as db:
        assert db.scalar(select(func.count()).select_from(File)) == 0
        assert db.scalar(select(func.count()).select_from(Resource)) == 0
    assert [p for p in ctx.archive_root.rglob("*") if p.is_file()] == []
    # and the same upload, complete, works afterwards
    r = s.put(f"{live_server}{path}", data=b"complete")
    assert r.status_code == 200, r.text
    assert s.get(f"{live_server}{path}").content == b"complete"
