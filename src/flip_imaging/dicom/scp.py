"""One DICOM receiver (SCP) on pynetdicom: C-ECHO and C-STORE for every storage SOP class.

A C-STORE is answered with success only once the dataset, as received (no decoding), is written with
its file meta information into the spool and fsynced (see :mod:`flip_imaging.intake.spool`). Cheap
checks run first so that a sender learns at once about data that can never be processed: a dataset
that is structurally broken (truncated) gets ``0xC000`` (cannot understand), a dataset whose SOP Class
does not match the negotiated one gets ``0xA900``; neither is spooled.
"""

from __future__ import annotations

import io
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from flip_imaging.dicom import _pynetdicom
from flip_imaging.dicom.structure import (
    DEFLATED,
    EXPLICIT_BE,
    IMPLICIT_LE,
    LONG_VRS,
    BadDicomFile,
    check_dataset_structure,
)

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_CLASS_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000


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


class InstanceSink(Protocol):
    """Where an acknowledged instance goes: ``write`` returns only once the bytes are durable."""

    def write(self, source: str, parts: tuple[memoryview, memoryview]) -> object: ...


class DicomSCP:
    """A running pynetdicom server for one receiver; every accepted instance goes to ``sink``."""

    def __init__(self, spec: ReceiverSpec, sink: InstanceSink) -> None:
        self.spec = spec
        self.sink = sink
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
        _pynetdicom.check()
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
        """Cut pynetdicom's per-instance latency on this association (see :mod:`._pynetdicom`)."""
        _pynetdicom.speed_up(event.assoc)

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
                self.sink.write(self.source, (header.getbuffer(), view))
            except OSError as exc:
                log.error("spool write failed on receiver %s: %s", self.spec.ae_title, exc.strerror)
                return _status(STATUS_OUT_OF_RESOURCES, "cannot store the instance (spool)")
            return STATUS_SUCCESS
        finally:
            view.release()


def _status(code: int, comment: str | None) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds
