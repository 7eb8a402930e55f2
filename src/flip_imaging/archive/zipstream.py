"""A streaming ZIP writer: members are read and emitted chunk by chunk, so memory stays flat.

Downloads of whole resources or sessions can be many gigabytes; building the archive in memory or in a
temporary file would cost memory or disk proportional to the download. Here every member is *stored*
(DICOM and NIfTI barely compress, and deflating would cost CPU for nothing), its CRC-32 is computed while
streaming and written in a data descriptor after the data. ZIP64 records are used per member and for the
central directory whenever a size, an offset or the member count does not fit the classic fields.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1024 * 1024
LIMIT32 = 0xFFFFFFFF
LIMIT16 = 0xFFFF
FLAGS = 0x0808  # bit 3: sizes and CRC in a data descriptor; bit 11: UTF-8 names


@dataclass(frozen=True)
class ZipMember:
    """One member: its name inside the archive, the file to read, and its expected size."""

    arcname: str
    path: Path
    size: int
    mtime: float | None = None


@dataclass
class _Entry:
    name: bytes
    offset: int
    crc: int
    size: int
    zip64: bool
    dostime: int
    dosdate: int


def _dos_datetime(ts: float | None) -> tuple[int, int]:
    t = time.localtime(ts if ts is not None else time.time())
    year = max(t.tm_year, 1980)
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((year - 1980) << 9) | (
        t.tm_mon << 5
    ) | t.tm_mday


def stream_zip(
    members: Iterable[ZipMember], *, force_zip64: bool = False, chunk_size: int = CHUNK
) -> Iterator[bytes]:
    """Yield the bytes of a ZIP archive of ``members`` (stored, not compressed).

    ``force_zip64`` writes ZIP64 records even for small archives (used by tests to exercise them).
    A member whose file turns out shorter or longer than announced is still written correctly: the
    data descriptor and central directory carry the real size.
    """
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zip-crc")
    try:
        yield from _stream(members, force_zip64, chunk_size, executor)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


class _RunningCrc:
    """CRC-32 computed on a helper thread while the chunk is being sent (zlib releases the GIL).

    One worker runs the updates in submission order; at most ``depth`` chunks wait, so memory stays
    bounded by a few chunks.
    """

    def __init__(self, executor: ThreadPoolExecutor, depth: int = 4) -> None:
        self._executor = executor
        self._value = 0
        self._pending: deque[Future[None]] = deque()
        self._depth = depth

    def _apply(self, chunk: bytes) -> None:
        self._value = zlib.crc32(chunk, self._value)

    def update(self, chunk: bytes) -> None:
        self._pending.append(self._executor.submit(self._apply, chunk))
        while len(self._pending) > self._depth:
            self._pending.popleft().result()

    def result(self) -> int:
        while self._pending:
            self._pending.popleft().result()
        return self._value


def _stream(
    members: Iterable[ZipMember], force_zip64: bool, chunk_size: int, executor: ThreadPoolExecutor
) -> Iterator[bytes]:
    entries: list[_Entry] = []
    offset = 0
    for member in members:
        name = member.arcname.encode("utf-8")
        zip64 = force_zip64 or member.size >= LIMIT32 or offset >= LIMIT32
        dostime, dosdate = _dos_datetime(member.mtime)
        if zip64:
            extra = struct.pack("<HHQQ", 0x0001, 16, 0, 0)
            header = (
                struct.pack(
                    "<IHHHHHIIIHH",
                    0x04034B50,
                    45,
                    FLAGS,
                    0,
                    dostime,
                    dosdate,
                    0,
                    LIMIT32,
                    LIMIT32,
                    len(name),
                    len(extra),
                )
                + name
                + extra
            )
        else:
            header = (
                struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, FLAGS, 0, dostime, dosdate, 0, 0, 0, len(name), 0)
                + name
            )
        yield header
        running = _RunningCrc(executor)
        size = 0
        with open(member.path, "rb") as fh:
            while chunk := fh.read(chunk_size):
                running.update(chunk)
                size += len(chunk)
                yield chunk
        crc = running.result()
        if size >= LIMIT32 and not zip64:
            # announced small but grew past 4 GiB: a classic descriptor cannot hold it
            raise ValueError(f"{member.arcname} grew beyond 4 GiB while being zipped")
        if zip64:
            descriptor = struct.pack("<IIQQ", 0x08074B50, crc, size, size)
        else:
            descriptor = struct.pack("<IIII", 0x08074B50, crc, size, size)
        yield descriptor
        entries.append(_Entry(name, offset, crc, size, zip64, dostime, dosdate))
        offset += len(header) + size + len(descriptor)

    cd_start = offset
    cd_size = 0
    for e in entries:
        extra_fields: list[int] = []
        size32 = e.size
        offset32 = e.offset
        if e.zip64 or e.size >= LIMIT32:
            extra_fields += [e.size, e.size]
            size32 = LIMIT32
        if e.zip64 or e.offset >= LIMIT32:
            extra_fields.append(e.offset)
            offset32 = LIMIT32
        extra = (
            struct.pack("<HH", 0x0001, 8 * len(extra_fields))
            + struct.pack(f"<{len(extra_fields)}Q", *extra_fields)
            if extra_fields
            else b""
        )
        version = 45 if extra_fields else 20
        record = (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                (3 << 8) | version,
                version,
                FLAGS,
                0,
                e.dostime,
                e.dosdate,
                e.crc,
                size32,
                size32,
                len(e.name),
                len(extra),
                0,
                0,
                0,
                (0o100644 << 16),
                offset32,
            )
            + e.name
            + extra
        )
        cd_size += len(record)
        yield record

    count = len(entries)
    need64 = force_zip64 or count >= LIMIT16 or cd_start >= LIMIT32 or cd_size >= LIMIT32
    if need64:
        eocd64_offset = cd_start + cd_size
        yield struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, cd_size, cd_start)
        yield struct.pack("<IIQI", 0x07064B50, 0, eocd64_offset, 1)
        yield struct.pack(
            "<IHHHHIIH",
            0x06054B50,
            0,
            0,
            min(count, LIMIT16),
            min(count, LIMIT16),
            min(cd_size, LIMIT32),
            min(cd_start, LIMIT32),
            0,
        )
    else:
        yield struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, cd_size, cd_start, 0)
