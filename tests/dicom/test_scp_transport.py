"""The receiver's changes to pynetdicom's transport (no database): exact reads with immediate ACKs,
no Nagle delay on answers, the blocking association loop; and script hand-over to worker processes."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from flip_imaging.dicom import _pynetdicom, scp
from flip_imaging.dicom.scp import DicomSCP, ReceiverSpec
from flip_imaging.intake import deid_worker
from flip_imaging.intake.spool import Spool
from flip_imaging.netutil import free_port
from flip_imaging.synthetic import PlantedPHI, SeriesSpec, make_series
from flip_imaging.waiting import wait_until


def test_recv_exact_reassembles_a_trickled_message() -> None:
    server, client = socket.socketpair()
    payload = os.urandom(300_000)

    def trickle() -> None:
        for i in range(0, len(payload), 7_001):
            client.sendall(payload[i : i + 7_001])
            if i % 70_010 == 0:
                time.sleep(0.002)

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        got = _pynetdicom._recv_exact(SimpleNamespace(socket=server), len(payload))
        assert bytes(got) == payload
    finally:
        sender.join()
        server.close()
        client.close()


def test_recv_exact_returns_what_arrived_when_the_peer_closes() -> None:
    server, client = socket.socketpair()
    client.sendall(b"partial")
    client.close()
    try:
        assert bytes(_pynetdicom._recv_exact(SimpleNamespace(socket=server), 100)) == b"partial"
    finally:
        server.close()


def test_associations_get_the_fast_transport_and_still_store(tmp_path: Path) -> None:
    """A live receiver: the accepted socket has TCP_NODELAY, the association runs our loop, a C-STORE
    is spooled and answered, and a release ends the association cleanly."""
    _pynetdicom.check()  # raises if pynetdicom changed: review _pynetdicom.py's patches
    spool = Spool(tmp_path / "spool")
    port = free_port()
    receiver = DicomSCP(ReceiverSpec(pk=7, ae_title="FLIP", port=port, whitelist=None), spool)
    receiver.start()
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="FLIP")
        assert assoc.is_established
        server_side = receiver.server.active_associations
        assert len(server_side) == 1
        accepted = server_side[0]
        sock = accepted.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert accepted._run_reactor.__func__ is _pynetdicom._association_reactor
        ds = next(iter(make_series(SeriesSpec("CT", 1, 32, 32, 1, None), PlantedPHI("TR"))))
        status = assoc.send_c_store(ds)
        assert status.Status == 0x0000
        assoc.release()
        assert assoc.is_released
        names = spool.pending()
        assert len(names) == 1 and names[0].startswith("r7_")
        wait_until(lambda: not receiver.server.active_associations, 10, 0.02, what="the association to end")
    finally:
        receiver.stop()


def test_echo_handler_unchanged(tmp_path: Path) -> None:
    receiver = DicomSCP(ReceiverSpec(pk=1, ae_title="FLIP", port=free_port(), whitelist=None),
                        Spool(tmp_path / "spool"))
    receiver.start()
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", receiver.spec.port, ae_title="FLIP")
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        receiver.stop()


def _job(tmp_path: Path, ref: deid_worker.ScriptRef) -> deid_worker.DeidJob:
    ds = next(iter(make_series(SeriesSpec("CT", 1, 16, 16, 1, None), PlantedPHI("SR"))))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = tmp_path / "raw.dcm"
    raw.write_bytes(buf.getvalue())
    return deid_worker.DeidJob(raw=str(raw), out=str(tmp_path / "out" / "1.dcm"), scripts=[ref],
                               variables={"project": "P", "subject": "S", "session": "E"})


def test_worker_reads_the_script_by_digest_and_hashes_its_output(tmp_path: Path) -> None:
    text = 'version "6.1"\n(0010,0010) := "ANON"\n'
    path = tmp_path / "script.das"
    path.write_text(text)
    ref = deid_worker.ScriptRef("site", 3, hashlib.sha256(text.encode()).hexdigest(), str(path))
    result = deid_worker.run(_job(tmp_path, ref))
    assert result.ok, result.reason
    out = (tmp_path / "out" / "1.dcm").read_bytes()
    assert result.size == len(out) and result.sha256 == hashlib.sha256(out).hexdigest()
    assert b"ANON" in out


def test_worker_refuses_a_script_that_changed_under_it(tmp_path: Path) -> None:
    path = tmp_path / "script.das"
    path.write_text("(0010,0010) := \"OTHER\"\n")
    ref = deid_worker.ScriptRef("site", 4, hashlib.sha256(b"something else").hexdigest(), str(path))
    result = deid_worker.run(_job(tmp_path, ref))
    assert not result.ok
    assert "site anonymization script failed" in result.reason and "changed" in result.reason
    assert not (tmp_path / "out" / "1.dcm").exists()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_pipeline_publishes_scripts_owner_only(ctx) -> None:  # type: ignore[no-untyped-def]
    from flip_imaging.intake import scriptstore
    from flip_imaging.intake.pipeline import Pipeline

    pipe = Pipeline(ctx)
    stored = scriptstore.StoredScript(9, 'version "6.1"\n(0010,0020) := "X"\n', True)
    ref = pipe.script_ref("project", stored)
    path = Path(ref.path)
    assert path.parent == pipe.spool.scripts
    assert path.read_text() == stored.text
    assert ref.digest == hashlib.sha256(stored.text.encode()).hexdigest() and path.name == f"{ref.digest}.das"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pipe.spool.scripts.stat().st_mode) == 0o700
    assert pipe.script_ref("project", stored) == ref  # idempotent



def test_whitelist_parsing_and_matching() -> None:
    entries = ["PACS", "MODALITY@127.0.0.1", "NOWHERE@no-such-host.invalid", " ", "LOCAL@localhost"]
    wl = scp.parse_whitelist(entries)
    assert ("PACS", None) in wl and ("MODALITY", "127.0.0.1") in wl and ("LOCAL", "127.0.0.1") in wl
    assert scp.whitelisted(wl, "PACS ", "203.0.113.5")  # AE only: any host; trailing padding ignored
    assert scp.whitelisted(wl, "MODALITY", "::ffff:127.0.0.1")  # IPv4-mapped IPv6 peer
    assert not scp.whitelisted(wl, "MODALITY", "203.0.113.5")
    assert not scp.whitelisted(wl, "NOWHERE", "127.0.0.1")  # an unresolvable host admits nobody
    assert not scp.whitelisted(wl, "STRANGER", "127.0.0.1")


def test_deid_workers_end_when_the_server_is_gone() -> None:
    """A killed server must not leave its de-identification processes behind (they would wait on
    their task queue for ever). Here a stand-in process plays the server and is killed."""
    import multiprocessing
    import subprocess
    from concurrent.futures import ProcessPoolExecutor

    server = subprocess.Popen(["sleep", "600"])
    pool = ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=deid_worker.init_worker,
        initargs=(server.pid,),
    )
    try:
        worker_pid = pool.submit(os.getpid).result(timeout=60)
        os.kill(worker_pid, 0)  # alive while the "server" is
        server.kill()
        server.wait()
        def worker_gone() -> bool:
            try:
                os.kill(worker_pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_until(worker_gone, 15, what="the de-identification worker to end with the server")
    finally:
        server.kill()
        pool.shutdown(wait=False, cancel_futures=True)


def test_check_fails_loudly_when_a_patched_internal_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pynetdicom release without an internal the patches replace must stop the receiver from
    starting, not quietly run without the speed-up."""
    monkeypatch.setitem(_pynetdicom._REQUIRED, _pynetdicom.Association, ("_no_such_internal",))
    with pytest.raises(_pynetdicom.PynetdicomIncompatible, match="_no_such_internal"):
        _pynetdicom.check()
    receiver = DicomSCP(ReceiverSpec(pk=8, ae_title="FLIP", port=free_port(), whitelist=None), object())  # type: ignore[arg-type]
    with pytest.raises(_pynetdicom.PynetdicomIncompatible):
        receiver.start()
