"""Planted PHI: unique, searchable marker values put into synthetic DICOM.

Every identifying value the generator writes comes from a :class:`PlantedPHI`, which remembers it. A
de-identification check can then search the *bytes* of an output file for every planted value in every
encoding it could take (latin-1, UTF-8, person-name components, single values of a multi-valued element)
instead of trusting a reading of a few tags.

Value shapes, chosen so that an accidental match in legitimate output is practically impossible:

* text: ``PHI<marker><nnnn>Z`` (e.g. ``PHIQA0007Z``); the fixed width and the ``Z`` terminator mean one
  token is never a prefix of another;
* UIDs: under the root ``1.2.826.0.1.3680043.99999.<marker number>.`` — the root itself is a search
  token, so any original UID left anywhere is found (hashUID output is ``2.25.<digits>``);
* dates: distinct ``YYYYMMDD`` per subject, all of one subject's dates within a few days of each other
  (so a shift of 1000+ days can never map one planted date onto another);
* times that identify (birth time) carry a fractional part (``HHMMSS.ffffff``) so the dot makes them
  unambiguous; ordinary study times are *retained* under the Modified Dates option and are not searched.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass, field
from enum import StrEnum

#: Root of every UID the generator makes; distinctive so a leaked original is easy to find.
UID_ROOT = "1.2.826.0.1.3680043.99999"


class Category(StrEnum):
    """How a de-identified output must treat a planted value."""

    IDENTIFYING = "identifying"  # must not appear anywhere in the output
    DATE = "date"  # must not appear: removed or shifted
    UID = "uid"  # must not appear: replaced (hashed)
    RETAINED_TIME = "retained_time"  # may stay (Retain Longitudinal Temporal Information option)


@dataclass
class PlantedValue:
    """One planted value, the attribute it went into and what the output must do with it."""

    key: str
    value: str
    category: Category
    vr: str


@dataclass
class PlantedPHI:
    """Registry of the marker values planted for one synthetic patient.

    ``marker`` (2-4 upper-case letters) makes the tokens of one patient distinct from another's; the
    dates of a patient are derived from the marker unless given.
    """

    marker: str = "QA"
    study_date: _dt.date | None = None
    birth_date: _dt.date | None = None
    _values: dict[str, PlantedValue] = field(default_factory=dict, repr=False)
    _counter: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not (self.marker.isascii() and self.marker.isalpha() and self.marker.isupper()):
            raise ValueError("marker must be upper-case ASCII letters")
        digest = int.from_bytes(hashlib.sha256(self.marker.encode()).digest()[:4], "big")
        if self.study_date is None:
            # Spread subjects over 2015-2022; day-of-year kept < 300 so +few days stays in the year.
            self.study_date = _dt.date(2015 + digest % 8, 1, 1) + _dt.timedelta(days=(digest >> 8) % 300)
        if self.birth_date is None:
            self.birth_date = _dt.date(1930 + (digest >> 16) % 50, 1, 1) + _dt.timedelta(
                days=(digest >> 4) % 360
            )
        self.uid_number = 1 + digest % 90000

    # -- allocation ---------------------------------------------------------------------------------
    @property
    def token_prefix(self) -> str:
        """The prefix every text token of this patient starts with (itself a search token)."""
        return f"PHI{self.marker}"

    @property
    def uid_root(self) -> str:
        """The UID root of this patient's UIDs, ending in a dot."""
        return f"{UID_ROOT}.{self.uid_number}."

    def _register(self, key: str, value: str, category: Category, vr: str) -> str:
        self._values[key] = PlantedValue(key, value, category, vr)
        return value

    def token(self) -> str:
        """A fresh unique text token (not registered on its own)."""
        self._counter += 1
        return f"PHI{self.marker}{self._counter:04d}Z"

    def text(self, key: str, vr: str = "LO", template: str = "{}") -> str:
        """The planted text for ``key`` (the same on every call): ``template`` filled with a token."""
        if key not in self._values:
            self._register(key, template.format(self.token()), Category.IDENTIFYING, vr)
        return self._values[key].value

    def multi(self, key: str, n: int = 3, vr: str = "LO") -> list[str]:
        """A multi-valued planted element: ``n`` distinct tokens."""
        if key not in self._values:
            self._register(key, "\\".join(self.token() for _ in range(n)), Category.IDENTIFYING, vr)
        return self._values[key].value.split("\\")

    def person(self, key: str, family: str = "", given: str = "") -> str:
        """A planted person name ``<family><token>^<given><token>``; non-ASCII prefixes allowed."""
        if key not in self._values:
            value = f"{family}{self.token()}^{given}{self.token()}"
            self._register(key, value, Category.IDENTIFYING, "PN")
        return self._values[key].value

    def persons(self, key: str, names: list[tuple[str, str]]) -> list[str]:
        """A multi-valued planted person name."""
        if key not in self._values:
            value = "\\".join(f"{f}{self.token()}^{g}{self.token()}" for f, g in names)
            self._register(key, value, Category.IDENTIFYING, "PN")
        return self._values[key].value.split("\\")

    def uid(self, key: str) -> str:
        """The planted UID for ``key`` (same on every call)."""
        if key not in self._values:
            self._counter += 1
            self._register(key, f"{self.uid_root}{self._counter}", Category.UID, "UI")
        return self._values[key].value

    def date(self, key: str, offset_days: int = 0) -> str:
        """A planted study-related date: the study date plus ``offset_days`` (|offset| < 100)."""
        if not -100 < offset_days < 100:
            raise ValueError("planted dates stay within 100 days of the study date")
        if key not in self._values:
            assert self.study_date is not None
            value = (self.study_date + _dt.timedelta(days=offset_days)).strftime("%Y%m%d")
            self._register(key, value, Category.DATE, "DA")
        return self._values[key].value

    def birth(self) -> str:
        """The planted birth date."""
        assert self.birth_date is not None
        return self._register("birth_date", self.birth_date.strftime("%Y%m%d"), Category.DATE, "DA")

    def identifying_time(self, key: str) -> str:
        """A time that identifies (e.g. birth time): has a distinctive fractional part."""
        if key not in self._values:
            n = self.uid_number % 60
            self._register(key, f"03{n:02d}{n:02d}.{self.uid_number:06d}", Category.IDENTIFYING, "TM")
        return self._values[key].value

    def retained_time(self, key: str, value: str) -> str:
        """A study time, recorded but allowed to stay (times are kept when dates are shifted)."""
        return self._register(key, value, Category.RETAINED_TIME, "TM")

    # -- inspection ----------------------------------------------------------------------------------
    @property
    def values(self) -> list[PlantedValue]:
        """Every planted value, in planting order."""
        return list(self._values.values())

    def get(self, key: str) -> str:
        """The planted value for ``key``."""
        return self._values[key].value

    def search_tokens(self, include_retained: bool = False) -> list[bytes]:
        """Every byte string whose presence in a de-identified output means a leak.

        For each planted value: the whole value and each single value (backslash) and each person-name
        component group/component (``=``, ``^``), each in latin-1 (when encodable) and UTF-8; plus the
        patient's token prefix and UID root, which catch any planted text/UID not listed explicitly.
        """
        out: set[bytes] = {self.token_prefix.encode(), self.uid_root.encode()}
        skip = set() if include_retained else {Category.RETAINED_TIME}
        for pv in self._values.values():
            if pv.category in skip:
                continue
            pieces = {pv.value}
            for single in pv.value.split("\\"):
                pieces.add(single)
                if pv.vr == "PN":
                    for group in single.split("="):
                        pieces.add(group)
                        pieces.update(c for c in group.split("^") if c)
            for piece in pieces:
                if not piece.strip():
                    continue
                for enc in ("latin-1", "utf-8"):
                    try:
                        out.add(piece.encode(enc))
                    except UnicodeEncodeError:
                        pass
        return sorted(out, key=lambda b: (len(b), b))


def find_leaks(data: bytes, tokens: list[bytes]) -> list[bytes]:
    """The tokens that occur anywhere in ``data``."""
    return [t for t in tokens if t in data]
