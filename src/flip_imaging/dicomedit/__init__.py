"""DicomEdit 6 (6.0-6.6) engine: parse a script once, apply it to many pydicom datasets.

    script = Script.parse(text)
    result = script.apply(ds, variables={"project": p, "subject": s, "session": e})
"""

from .engine import ApplyResult, Script
from .errors import DicomEditError, DicomEditRuntimeError, DicomEditSyntaxError
from .hashuid import hash_uid, new_uid

__all__ = [
    "ApplyResult",
    "DicomEditError",
    "DicomEditRuntimeError",
    "DicomEditSyntaxError",
    "Script",
    "hash_uid",
    "new_uid",
]
