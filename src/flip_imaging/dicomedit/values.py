"""Reading and writing element values the way DicomEdit sees them: as strings.

Writes of text VRs are stored as raw encoded bytes so pydicom never re-validates or re-formats a
value the script produced, and untouched elements stay as pydicom's lazy RawDataElements.
"""

from __future__ import annotations

from collections.abc import Sequence as SeqABC
from functools import lru_cache

from pydicom import config
from pydicom.charset import encode_string
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from .tagpath import element_vr

TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
                      "UI", "UR", "UT"})
INT_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "AT"})
FLOAT_VRS = frozenset({"FL", "FD"})
BYTES_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})


class ValueError_(Exception):
    """Internal: a value cannot be read or written (turned into a DicomEditRuntimeError)."""


def _one(x: object) -> str:
    if type(x) is float:  # FL/FD: shortest round-trip form, Java-like without a trailing ".0"
        r = repr(x)
        return r[:-2] if r.endswith(".0") else r
    # DS (DSfloat/DSdecimal) and IS keep the text they were read from; their repr() adds quotes
    return str(x)


# VRs that pydicom converts (datetime_conversion off) by decoding as ISO 8859-1 and stripping
# trailing spaces/NULs, so their raw bytes can be read without converting the element. Keeping the
# element raw also lets pydicom write it back without re-encoding.
_PLAIN_VRS = frozenset({"AS", "CS", "DA", "DT", "TM"})
# Character-set dependent text: plain ASCII without ESC (ISO 2022 code extensions) decodes the same
# under every character set pydicom supports. Multi-valued ones strip each value, the others the whole.
_MULTI_TEXT_VRS = frozenset({"SH", "LO", "UC"})
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT"})


def _raw_string(elem: object) -> str | None:
    """The getString form of an unconverted element, or None if it needs pydicom's conversion."""
    if type(elem) is not RawDataElement:
        return None
    vr, data = elem.VR, elem.value
    if not isinstance(data, bytes) or not data.isascii():
        return None
    if vr == "UI":
        return "\\".join(x.strip() for x in data.decode("latin-1").rstrip("\x00 ").split("\\"))
    if vr in _PLAIN_VRS and not config.datetime_conversion:
        return data.decode("latin-1").rstrip(" \x00")
    if b"\x1b" in data:
        return None
    if vr in _MULTI_TEXT_VRS:
        return "\\".join(v.rstrip("\x00 ") for v in data.decode("ascii").split("\\"))
    if vr in _SINGLE_TEXT_VRS:
        return data.decode("ascii").rstrip("\x00 ")
    return None


def read_string(ds: Dataset, tag: int) -> str | None:
    """Value of an element as DicomEdit's getString: multi-values joined by backslash."""
    if tag not in ds._dict:
        return None
    vr = element_vr(ds, tag)
    if vr == "SQ":
        raise ValueError_("cannot read a sequence as a value")
    if tag == 0x7FE00010:
        raise ValueError_("pixel data cannot be read as a value")
    fast = _raw_string(ds._dict[tag])
    if fast is not None:
        return fast
    value = ds[tag].value
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("latin-1").rstrip("\x00 ")
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_one(x) for x in value)
    return _one(value)


@lru_cache(maxsize=4096)
def default_vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    if " or " in vr:
        vr = vr.split(" or ")[0]
    return vr


@lru_cache(maxsize=4096)
def private_vr(tag: int, creator: str) -> str:
    try:
        vr = private_dictionary_VR(tag, creator)
    except KeyError:
        return "UN"
    if " or " in vr:
        vr = vr.split(" or ")[0]
    return vr


def encode_text(value: str, vr: str, encodings: SeqABC[str]) -> bytes:
    try:
        data = encode_string(value, list(encodings))
    except Exception as e:  # pragma: no cover - pydicom replaces unencodable chars itself
        raise ValueError_(f"cannot encode value for VR {vr}: {type(e).__name__}") from None
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return data


def store(ds: Dataset, tag: int, vr: str, value: str, encodings: SeqABC[str],
          encoding: tuple[bool, bool]) -> None:
    """Put `value` into `ds` at `tag` with VR `vr` (replacing any existing element)."""
    if vr == "SQ":
        raise ValueError_("cannot assign a value to a sequence")
    implicit, little = encoding
    if vr in TEXT_VRS or vr in BYTES_VRS:
        data = encode_text(value, vr, encodings)
        btag = BaseTag(tag)
        raw = RawDataElement(btag, vr, len(data), data, 0, implicit, little, True, False)
        ds._dict[btag] = raw  # type: ignore[assignment]
        return
    parts = value.split("\\") if value != "" else []
    try:
        if vr in INT_VRS:
            base = 16 if vr == "AT" else 10
            nums: list[int] | list[float] = [int(p.strip(), base) for p in parts]
        elif vr in FLOAT_VRS:
            nums = [float(p.strip()) for p in parts]
        else:
            raise ValueError_(f"cannot assign a string to VR {vr}")
    except ValueError:
        raise ValueError_(f"value is not a valid number for VR {vr}") from None
    if not nums:
        elem = DataElement(tag, vr, None)
    elif len(nums) == 1:
        elem = DataElement(tag, vr, nums[0])
    else:
        elem = DataElement(tag, vr, nums)
    ds[tag] = elem


def new_sequence(ds: Dataset, tag: int) -> Sequence:
    seq = Sequence([])
    ds[tag] = DataElement(tag, "SQ", seq)
    return ds[tag].value
