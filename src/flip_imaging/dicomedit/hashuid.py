"""UID generation compatible with XNAT's DicomEdit.

`hash_uid` must be byte-identical to XNAT so re-uploads of the same study land on the same
de-identified UIDs at every site.
"""

from __future__ import annotations

import hashlib
import uuid


def hash_uid(uid: str) -> str:
    """One-way map of a UID to a `2.25.` UID, as DicomEdit's hashUID (name-based UUID v5, no namespace)."""
    digest = bytearray(hashlib.sha1(uid.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    return "2.25." + str(int.from_bytes(digest, "big"))


def new_uid(prefix: str | None = None) -> str:
    """A fresh random UID, under `prefix` when given (kept within DICOM's 64 characters)."""
    number = str(uuid.uuid4().int)
    if not prefix:
        return "2.25." + number
    prefix = prefix.rstrip(".")
    room = 64 - len(prefix) - 1
    if room < 1:
        raise ValueError("UID prefix too long")
    return f"{prefix}.{number[:room]}"
