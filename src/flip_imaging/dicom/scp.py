"""One DICOM receiver (SCP) on pynetdicom: C-ECHO and C-STORE for every storage SOP class.

A C-STORE is answered with success only once the dataset, as received (no decoding), is written with
its file meta information into the spool and fsynced (see :mod:`flip_imaging.dicom.spool`). Cheap
checks run first so that a sender learns at once about data that can never be processed: a dataset
that is structurally broken (truncated) gets ``0xC000`` (cannot understand), a dataset whose SOP Class
does not match the negotiated one gets ``0xA900``; neither is spooled.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import queue
import socket
import struct
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynetdicom
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket

from flip_imaging.dicom.spool import Spool
from flip_imaging.dicomedit.fileio import LONG_VRS, BadDicomFile, check_dataset_structure

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_CLASS_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"}
#: seconds pynetdicom's per-association loop pauses when idle (its default is 0.001)
DUL_LOOP_DELAY = 0.0002


@dataclass(frozen=True)
class ReceiverSpec:
    """What a running SCP needs; a change of any field restarts the SCP."""

    pk: int
    ae_title: str
    port: int
    #: allowed callers when the whitelist is on: (calling AE title, peer IP address or None for any)
    whitelist: tuple[tuple[str, str | None], ...] | None
    host: str = "127.0.0.1"


def whitelist_entry(entry: str) -> tuple[str, str]:
    """Split one of XNAT's whitelist entries, ``AETITLE`` or ``AETITLE@address``, into (AE title,
    address or ""); ValueError if it is neither."""
    ae, at, host = (part.strip() for part in entry.strip().partition("@"))
    if not ae or len(ae) > 16 or "\\" in ae or (at and not host):
        raise ValueError(f"whitelist entry {entry!r} is not AETITLE or AETITLE@address")
    return ae, host


def parse_whitelist(entries: list[str]) -> tuple[tuple[str, str | None], ...]:
    """A receiver's whitelist (entries as checked by :func:`whitelist_entry`; others are skipped).
    A host name is resolved to its IPv4 address once, when the receiver (re)starts; one that does not
    resolve admits nobody, rather than everybody."""
    out: set[tuple[str, str | None]] = set()
    for entry in entries:
        try:
            ae, host = whitelist_entry(entry)
        except ValueError:
            continue
        address: str | None = None
        if host:
            try:
                address = socket.gethostbyname(host)
            except OSError:
                address = f"unresolved:{host}"
        out.add((ae, address))
    return tuple(sorted(out, key=lambda item: (item[0], item[1] or "")))


def whitelisted(whitelist: tuple[tuple[str, str | None], ...], calling_ae: str, address: str) -> bool:
    calling_ae = calling_ae.strip()
    if address.startswith("::ffff:"):
        address = address[7:]
    return any(ae == calling_ae and (host is None or host == address) for ae, host in whitelist)


def check_dataset(data: Any, transfer_syntax: str, sop_class: str) -> tuple[int, str | None]:
    """Structure walk of the raw dataset (values skipped) and the SOP Class check.

    Returns a DIMSE status and a comment (never containing element values).
    """
    buf = data  # bytes or the receiver's memoryview: walked in place, never copied
    if transfer_syntax in DEFLATED:
        return STATUS_SUCCESS, None  # the worker inflates and checks it
    try:
        check_dataset_structure(
            buf, implicit=transfer_syntax == IMPLICIT_LE, little=transfer_syntax != EXPLICIT_BE
        )
    except BadDicomFile as exc:
        return STATUS_CANNOT_UNDERSTAND, str(exc)[:64]
    except (struct.error, IndexError, ValueError):
        return STATUS_CANNOT_UNDERSTAND, "malformed dataset"
    found = _sop_class_of(buf, transfer_syntax)
    if found is not None and found != sop_class:
        return STATUS_SOP_CLASS_MISMATCH, "SOP Class of the dataset differs from the context"
    return STATUS_SUCCESS, None


def _sop_class_of(buf: bytes | memoryview, transfer_syntax: str) -> str | None:
    """(0008,0016) read straight from the bytes: it is one of the first elements of any dataset."""
    little = transfer_syntax != EXPLICIT_BE
    implicit = transfer_syntax == IMPLICIT_LE
    end = "<" if little else ">"
    pos = 0
    while pos + 8 <= len(buf):
        group, elem = struct.unpack_from(end + "HH", buf, pos)
        tag = (group << 16) | elem
        if tag > 0x00080016:
            return None
        if implicit:
            (length,) = struct.unpack_from(end + "I", buf, pos + 4)
            header = 8
        else:
            vr = bytes(buf[pos + 4 : pos + 6]).decode("ascii", "replace")
            if vr in LONG_VRS:
                (length,) = struct.unpack_from(end + "I", buf, pos + 8)
                header = 12
            else:
                (length,) = struct.unpack_from(end + "H", buf, pos + 6)
                header = 8
        if length == 0xFFFFFFFF:
            return None
        if tag == 0x00080016:
            value = bytes(buf[pos + header : pos + header + length])
            return value.rstrip(b"\x00 ").decode("ascii", "replace")
        pos += header + length
    return None


class DicomSCP:
    """A running pynetdicom server for one receiver; it spools and wakes the worker."""

    def __init__(self, spec: ReceiverSpec, spool: Spool) -> None:
        self.spec = spec
        self.spool = spool
        self.source = f"r{spec.pk}"
        self.server: Any = None

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.spec.ae_title)
        ae.maximum_pdu_size = 0  # no limit: fewer, larger P-DATA PDUs from peers that honour it
        ae.network_timeout = 60
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.maximum_associations = 64
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        return ae

    def start(self) -> None:
        ae = self._make_ae()
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_REQUESTED, self._on_requested),
        ]
        self.server = ae.start_server((self.spec.host, self.spec.port), block=False, evt_handlers=handlers)
        log.info("DICOM receiver %s listening on port %d", self.spec.ae_title, self.spec.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    @staticmethod
    def _on_open(event: Any) -> None:
        """Cut pynetdicom's polling latency, which paces every sender (each C-STORE waits for its
        answer): the network loop sleeps 1 ms whenever it finds nothing to do, and the association
        loop sleeps 1 ms before each look for a decoded message. A shorter pause for the first and a
        blocking wait for the second (see :func:`_association_reactor`) more than double the rate a
        sender can push (measured with storescu), at the cost of a little CPU while idle."""
        assoc = event.assoc
        dul = getattr(assoc, "dul", None)
        assoc_socket = getattr(dul, "socket", None)
        _no_delay(assoc_socket)
        if assoc_socket is not None and _RECV_PATCHABLE:
            assoc_socket.recv = types.MethodType(_recv_exact, assoc_socket)
        if dul is not None and hasattr(dul, "_run_loop_delay"):
            dul._run_loop_delay = DUL_LOOP_DELAY
        if _REACTOR_PATCHABLE:
            assoc._run_reactor = types.MethodType(_association_reactor, assoc)

    def _on_requested(self, event: Any) -> None:
        """The whitelist, checked on the A-ASSOCIATE-RQ (AE title and peer address): an unknown caller
        gets A-ASSOCIATE-RJ "calling AE title not recognised", as pynetdicom's own AE-only check does."""
        if self.spec.whitelist is None:
            return
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title or "")
        address = str(getattr(assoc.requestor, "address", "") or "")
        if whitelisted(self.spec.whitelist, calling, address):
            return
        log.warning(
            "receiver %s refused an association from %s at %s: not in its whitelist",
            self.spec.ae_title,
            calling.strip() or "(no AE title)",
            address,
        )
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    @staticmethod
    def _on_echo(event: Any) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: Any) -> Any:
        request = event.request
        context = event.context
        stream: io.BytesIO = request.DataSet
        view = stream.getbuffer()
        try:
            status, comment = check_dataset(view, context.transfer_syntax, str(request.AffectedSOPClassUID))
            if status != STATUS_SUCCESS:
                log.warning(
                    "receiver %s refused an instance from %s: %s",
                    self.spec.ae_title,
                    event.assoc.requestor.ae_title,
                    comment,
                )
                return _status(status, comment)
            meta = event.file_meta
            from pydicom.filewriter import write_file_meta_info

            header = io.BytesIO()
            header.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(header, meta, enforce_standard=True)  # type: ignore[arg-type]
            try:
                self.spool.write(self.source, (header.getbuffer(), view))
            except OSError as exc:
                log.error("spool write failed on receiver %s: %s", self.spec.ae_title, exc.strerror)
                return _status(STATUS_OUT_OF_RESOURCES, "cannot store the instance (spool)")
            return STATUS_SUCCESS
        finally:
            view.release()


def _no_delay(assoc_socket: Any) -> None:
    """Send each response at once: with Nagle's algorithm on, a response written in more than one
    piece waits for the peer's delayed ACK (40 ms on Linux) every so often, which a sender that waits
    for each answer (storescu, a PACS answering a C-MOVE) pays on every such instance."""
    sock = getattr(assoc_socket, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _recv_exact(self: Any, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv`` in a few large reads instead of 4 KiB ones, ACKing at once.

    Most senders leave Nagle's algorithm on (DCMTK does unless TCP_NODELAY is set in its
    environment): the tail of each C-STORE then waits until we ACK what came before, and a delayed ACK
    costs 40 ms on Linux, on a few percent of instances at random. TCP_QUICKACK after each read
    makes this side ACK immediately (the kernel clears it again by itself, hence every time).
    """
    sock = self.socket
    buf = bytearray(nr_bytes)
    got = 0
    with memoryview(buf) as view:
        while got < nr_bytes:
            n = sock.recv_into(view[got:], nr_bytes - got)
            if n == 0:  # the peer closed the connection: return what arrived, as pynetdicom does
                break
            got += n
            if _QUICKACK is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                except OSError:
                    pass
    if got < nr_bytes:
        del buf[got:]
    return buf


#: pynetdicom internals :func:`_recv_exact` relies on
_RECV_PATCHABLE = hasattr(AssociationSocket, "recv") and pynetdicom.__version__.startswith("3.")
#: pynetdicom internals :func:`_association_reactor` relies on (checked once; else its own loop runs)
_REACTOR_PATCHABLE = all(
    hasattr(Association, name) for name in ("_run_reactor", "_serve_request", "kill")
) and pynetdicom.__version__.startswith("3.")
#: longest wait for a decoded message before the association loop checks release, abort and timeouts
REACTOR_WAIT = 0.005


def _association_reactor(self: Any) -> None:
    """pynetdicom 3's acceptor loop (``Association._run_reactor``) with a blocking wait on the decoded
    message queue instead of a fixed 1 ms sleep before each poll; every check it makes is kept.

    It only serves C-ECHO and C-STORE here; their handlers never pause the reactor to send requests.
    """
    while not self._kill:
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False
        try:
            context_id, msg = self.dimse.msg_queue.get(timeout=REACTOR_WAIT)
        except queue.Empty:
            context_id, msg = None, None
        if msg:
            self._serve_request(msg, context_id)
            continue  # the peer usually sends the next request at once: look again before the checks
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return
        if self.acse.is_aborted():
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return
        if not self.dul.is_alive():
            self.kill()
            return
        if self.dul.idle_timer_expired():
            log.warning("DICOM association idle for too long: aborted")
            self.abort()
            self.kill()
            return


def _status(code: int, comment: str | None) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


class ScpHost:
    """The receivers run in a child process of their own, so that network decoding and the spool's
    fsyncs never compete for the interpreter lock with de-identification and archiving. The spool is
    the only interface; ``wakeup`` (a process-shared event) tells the worker that files arrived."""

    def __init__(self, spool_root: Path) -> None:
        mp = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or locks
        self.wakeup = mp.Event()
        self._conn, child = mp.Pipe()
        self._lock = threading.Lock()
        self.proc = mp.Process(
            target=_host_main,
            args=(str(spool_root), child, self.wakeup, os.getpid()),
            name="flip-dicom-scp",
            daemon=True,
        )
        self.proc.start()
        child.close()

    def apply(self, specs: list[ReceiverSpec], timeout: float = 60) -> dict[int, str]:
        """Run exactly ``specs`` (restarting changed ones); returns errors by receiver pk."""
        with self._lock:
            self._conn.send(("apply", specs))
            if not self._conn.poll(timeout):
                raise TimeoutError("the DICOM receiver process did not answer")
            return dict(self._conn.recv())

    def stop(self) -> None:
        with self._lock:
            try:
                self._conn.send(("stop", None))
                self._conn.poll(20)
            except (OSError, EOFError):
                pass
        self.proc.join(timeout=20)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def _host_main(spool_root: str, conn: Any, wakeup: Any, parent_pid: int) -> None:
    """Child process: keep the requested receivers running until told to stop or the parent is gone."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spool = Spool(Path(spool_root))
    spool.wakeup = wakeup
    running: dict[int, DicomSCP] = {}
    try:
        while True:
            if conn.poll(0.5):
                try:
                    command, payload = conn.recv()
                except EOFError:
                    return
                if command == "stop":
                    conn.send({})
                    return
                errors: dict[int, str] = {}
                wanted = {s.pk: s for s in payload}
                for pk in list(running):
                    if pk not in wanted or wanted[pk] != running[pk].spec:
                        running.pop(pk).stop()
                for pk, spec in wanted.items():
                    if pk in running:
                        continue
                    scp = DicomSCP(spec, spool)
                    try:
                        scp.start()
                    except OSError as exc:
                        errors[pk] = f"cannot listen on port {spec.port}: {exc.strerror}"
                        log.error("DICOM receiver %s: %s", spec.ae_title, errors[pk])
                        continue
                    running[pk] = scp
                conn.send(errors)
            if os.getppid() != parent_pid:  # the server died (e.g. kill -9): do not keep the ports
                return
    finally:
        for scp in running.values():
            scp.stop()
