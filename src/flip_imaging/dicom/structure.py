"""The PS3.5 structure walk: is this a complete, well-formed data set (tags, VRs, lengths, sequence
delimiters), without decoding values?

pydicom quietly accepts truncated or corrupt input (it stops at the damage), which would let a
half-received or half-read file through de-identification as a "clean" but broken copy. The receiver
walks each data set before acknowledging it; the de-identification reader walks files it did not
receive itself. Error messages name the problem, never element values.
"""

from __future__ import annotations

import struct

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

VALID_VRS = frozenset(
    "AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV"
    .split()
)
LONG_VRS = frozenset("OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
IMPLICIT_LE = ImplicitVRLittleEndian
EXPLICIT_BE = ExplicitVRBigEndian
DEFLATED = frozenset({DeflatedExplicitVRLittleEndian, "1.2.840.10008.1.2.8.1"})  # and Deflated Image Frame


class BadDicomFile(Exception):
    """The input is not a complete, well-formed DICOM Part 10 file."""


_VR_TEXT = {vr.encode("ascii"): vr for vr in VALID_VRS}


class _Walker:
    def __init__(self, data: bytes, pos: int, implicit: bool, little: bool) -> None:
        self.data = data
        self.pos = pos
        self.implicit = implicit
        self.end = "<" if little else ">"
        self._tag_struct = struct.Struct(self.end + "HH")
        self._u16 = struct.Struct(self.end + "H")
        self._u32 = struct.Struct(self.end + "I")

    def need(self, n: int, what: str) -> None:
        if self.pos + n > len(self.data):
            raise BadDicomFile(f"file is truncated (in {what} at byte {self.pos})")

    def tag(self) -> int:
        self.need(4, "tag")
        g, e = struct.unpack_from(self.end + "HH", self.data, self.pos)
        self.pos += 4
        return (g << 16) | e

    def u32(self) -> int:
        self.need(4, "length")
        (v,) = struct.unpack_from(self.end + "I", self.data, self.pos)
        self.pos += 4
        return int(v)

    def dataset(self, stop: int | None, in_item: bool, depth: int = 0) -> None:
        """Walk elements until `stop` (a byte offset) or, for undefined-length items, the item end.

        The loop is written out (locals, precompiled structs, no helper calls for plain elements):
        a DICOM receiver runs it on every instance before acknowledging it."""
        if depth > 64:
            raise BadDicomFile("sequences nested too deeply")
        data = self.data
        size = len(data)
        pos = self.pos
        tag_struct = self._tag_struct
        u16 = self._u16
        u32 = self._u32
        implicit = self.implicit
        try:
            while True:
                if stop is not None and pos >= stop:
                    if pos > stop:
                        raise BadDicomFile("element runs past the end of its item")
                    return
                if stop is None and not in_item and pos == size:
                    return
                if pos + 4 > size:
                    raise BadDicomFile(f"file is truncated (in tag at byte {pos})")
                group, elem = tag_struct.unpack_from(data, pos)
                tag = (group << 16) | elem
                if group == 0xFFFE or implicit:
                    if tag == ITEM_END:
                        self.pos = pos + 4
                        if not in_item or stop is not None:
                            raise BadDicomFile("unexpected item delimiter")
                        self.u32()
                        pos = self.pos
                        return
                    if tag in (ITEM, SEQ_END):
                        raise BadDicomFile("unexpected item tag outside a sequence")
                    if pos + 8 > size:
                        raise BadDicomFile(f"file is truncated (in length at byte {pos + 4})")
                    (length,) = u32.unpack_from(data, pos + 4)
                    pos += 8
                    vr = None
                else:
                    if pos + 6 > size:
                        raise BadDicomFile(f"file is truncated (in VR at byte {pos + 4})")
                    vr = _VR_TEXT.get(bytes(data[pos + 4 : pos + 6]))
                    if vr is None:
                        raise BadDicomFile(f"unknown VR at ({group:04X},{elem:04X})")
                    if vr in LONG_VRS:
                        if pos + 8 > size:
                            raise BadDicomFile(f"file is truncated (in reserved bytes at byte {pos + 6})")
                        if pos + 12 > size:
                            raise BadDicomFile(f"file is truncated (in length at byte {pos + 8})")
                        (length,) = u32.unpack_from(data, pos + 8)
                        pos += 12
                    else:
                        if pos + 8 > size:
                            raise BadDicomFile(f"file is truncated (in length at byte {pos + 6})")
                        (length,) = u16.unpack_from(data, pos + 6)
                        pos += 8
                if length == UNDEFINED:
                    if vr in ("SQ", "UN", None) or tag == 0x7FE00010 or vr in ("OB", "OW"):
                        self.pos = pos
                        self.sequence(depth, encapsulated=vr not in ("SQ", None, "UN") or tag == 0x7FE00010)
                        pos = self.pos
                    else:
                        raise BadDicomFile(f"undefined length not allowed for VR {vr}")
                    continue
                if pos + length > size:
                    raise BadDicomFile(
                        f"file is truncated (in value of ({group:04X},{elem:04X}) at byte {pos})"
                    )
                if vr == "SQ":
                    self.pos = pos
                    self.sequence_items(pos + length, depth)
                    pos = self.pos
                else:
                    pos += length
        finally:
            self.pos = pos

    def element_header(self, tag: int) -> str | None:
        if self.implicit or tag >> 16 == 0xFFFE:
            self._length = self.u32()
            return None
        self.need(2, "VR")
        vr_bytes = self.data[self.pos:self.pos + 2]
        self.pos += 2
        try:
            vr = vr_bytes.decode("ascii")
        except UnicodeDecodeError:
            vr = "??"
        if vr not in VALID_VRS:
            raise BadDicomFile(f"unknown VR at ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        if vr in LONG_VRS:
            self.need(2, "reserved bytes")
            self.pos += 2
            self._length = self.u32()
        else:
            self.need(2, "length")
            (self._length,) = struct.unpack_from(self.end + "H", self.data, self.pos)
            self.pos += 2
        return vr

    _length = 0

    def sequence_items(self, end: int, depth: int) -> None:
        while self.pos < end:
            tag = self.tag()
            length = self.u32()
            if tag == SEQ_END:
                raise BadDicomFile("sequence delimiter inside a defined-length sequence")
            if tag != ITEM:
                raise BadDicomFile("expected a sequence item")
            if length == UNDEFINED:
                self.dataset(None, True, depth + 1)
            else:
                self.need(length, "sequence item")
                self.dataset(self.pos + length, True, depth + 1)
        if self.pos != end:
            raise BadDicomFile("sequence item runs past the end of its sequence")

    def sequence(self, depth: int, encapsulated: bool) -> None:
        """Undefined-length sequence or encapsulated pixel data: items until the sequence delimiter."""
        while True:
            tag = self.tag()
            length = self.u32()
            if tag == SEQ_END:
                return
            if tag != ITEM:
                raise BadDicomFile("expected a sequence item")
            if encapsulated:
                if length == UNDEFINED:
                    raise BadDicomFile("undefined-length fragment")
                self.need(length, "pixel data fragment")
                self.pos += length
            elif length == UNDEFINED:
                self.dataset(None, True, depth + 1)
            else:
                self.need(length, "sequence item")
                self.dataset(self.pos + length, True, depth + 1)


def check_dataset_structure(data: bytes | memoryview, *, implicit: bool, little: bool) -> None:
    """Raise BadDicomFile unless ``data`` is exactly one complete data set (no file meta): a DICOM
    receiver checks what arrived over the network this way before acknowledging it."""
    _Walker(data, 0, implicit=implicit, little=little).dataset(None, False)  # type: ignore[arg-type]


def check_structure(data: bytes, body_checked: bool = False) -> None:
    """Raise BadDicomFile unless `data` is a complete DICOM Part 10 file.

    ``body_checked``: the data set after the file meta was already walked (a DICOM receiver does so
    before acknowledging); only the preamble and file meta are checked here."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise BadDicomFile("not a DICOM Part 10 file (no 128-byte preamble and 'DICM' prefix)")
    meta = _Walker(data, 132, implicit=False, little=True)
    ts = None
    while meta.pos < len(data):
        meta.need(4, "file meta")
        group = struct.unpack_from("<H", data, meta.pos)[0]
        if group != 0x0002:
            break
        tag = meta.tag()
        meta.element_header(tag)
        meta.need(meta._length, "file meta")
        if tag == 0x00020010:
            ts = data[meta.pos:meta.pos + meta._length].rstrip(b"\x00 ").decode("ascii", "replace")
        meta.pos += meta._length
    if ts is None:
        raise BadDicomFile("file meta has no Transfer Syntax UID")
    if ts in DEFLATED or body_checked:
        return  # compressed stream: pydicom inflates and checks it
    body = _Walker(data, meta.pos, implicit=ts == IMPLICIT_LE, little=ts != EXPLICIT_BE)
    body.dataset(None, False)


