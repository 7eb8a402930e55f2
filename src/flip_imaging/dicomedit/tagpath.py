"""Tag patterns and tag paths, and how they find elements in a pydicom Dataset.

Lookups only convert what they must: exact public tags are a dict lookup, wildcard patterns walk
`ds._dict` keys without converting values, and sequences are only opened when a path descends
into them. PixelData is never read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

HEXISH = "0123456789abcdefABCDEFxX@#"


@dataclass(frozen=True)
class TagPattern:
    """One `(gggg,eeee)` or `(gggg,{Creator}ee)`, possibly with X/@/# digit wildcards."""

    text: str
    group_mask: int
    group_value: int
    elem_mask: int  # 16 bits for public, 8 bits (low byte) for private
    elem_value: int
    creator: str | None = None

    @property
    def is_private(self) -> bool:
        return self.creator is not None

    @property
    def is_exact(self) -> bool:
        return self.group_mask == 0xFFFF and self.elem_mask == (0xFF if self.creator is not None else 0xFFFF)

    @property
    def exact_tag(self) -> int | None:
        if self.creator is None and self.is_exact:
            return (self.group_value << 16) | self.elem_value
        return None

    def match_group(self, group: int) -> bool:
        return group & self.group_mask == self.group_value

    def match_public(self, tag: int) -> bool:
        return (tag >> 16) & self.group_mask == self.group_value and tag & self.elem_mask == self.elem_value


def _digits(text: str) -> tuple[int, int]:
    """Mask and value for hex digits with wildcards: X any, @ even, # odd."""
    mask = value = 0
    for ch in text:
        mask <<= 4
        value <<= 4
        if ch in "xX":
            continue
        if ch == "@":
            mask |= 0x1
        elif ch == "#":
            mask |= 0x1
            value |= 0x1
        else:
            mask |= 0xF
            value |= int(ch, 16)
    return mask, value


def make_pattern(group: str, element: str, creator: str | None) -> TagPattern:
    gm, gv = _digits(group)
    em, ev = _digits(element)
    if creator is None:
        text = f"({group},{element})"
    else:
        text = f"({group},{{{creator}}}{element})"
    return TagPattern(text, gm, gv, em, ev, creator)


@dataclass(frozen=True)
class Step:
    """A path level: a tag (with optional item selector) or a level wildcard `*`, `+`, `.`."""

    kind: str  # "tag", "*", "+", "."
    pattern: TagPattern | None = None
    item: int | str | None = None  # int index, "%" any item, None not given


@dataclass(frozen=True)
class TagPath:
    """A DicomEdit tag path such as `(0008,1140)[%]/(0008,1155)` or `*/(0010,0010)`."""

    text: str
    steps: tuple[Step, ...]
    singular: bool = field(default=False)

    @staticmethod
    def build(text: str, steps: list[Step]) -> TagPath:
        singular = True
        for i, st in enumerate(steps):
            if st.kind != "tag" or st.pattern is None or not st.pattern.is_exact:
                singular = False
            elif i < len(steps) - 1 and not isinstance(st.item, int):
                singular = False
            elif i == len(steps) - 1 and st.item is not None:
                singular = False
        return TagPath(text, tuple(steps), singular)

    @property
    def last(self) -> Step:
        return self.steps[-1]

    @property
    def is_private_leaf(self) -> bool:
        return self.last.kind == "tag" and self.last.pattern is not None and self.last.pattern.is_private


# ---- reading helpers ------------------------------------------------------------------------------

def element_vr(ds: Dataset, tag: int) -> str:
    """VR of an element without converting its value."""
    raw = ds._dict.get(tag)
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def creator_of(ds: Dataset, group: int, block: int) -> str | None:
    """Private creator string that reserves `block` of `group` in `ds`."""
    tag = (group << 16) | block
    if tag not in ds._dict:
        return None
    value = ds[tag].value
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value is None:
        return ""
    return str(value).strip(" \x00")


def find_block(ds: Dataset, group: int, creator: str) -> int | None:
    """Block number (0x10-0xFF) reserved by `creator` in `group`, or None."""
    lo, hi = (group << 16) | 0x10, (group << 16) | 0xFF
    for tag in ds._dict:
        if lo <= tag <= hi and creator_of(ds, group, tag & 0xFF) == creator:
            return tag & 0xFF
    return None


def matching_tags(ds: Dataset, pattern: TagPattern) -> list[int]:
    """Tags in `ds` (this level only) that match `pattern`, in tag order."""
    exact = pattern.exact_tag
    if exact is not None:
        return [exact] if exact in ds._dict else []
    if pattern.creator is None:
        return sorted(t for t in ds._dict if pattern.match_public(t))
    out = []
    creators: dict[tuple[int, int], str | None] = {}
    for t in sorted(ds._dict):
        group, elem = t >> 16, t & 0xFFFF
        if not group & 1 or elem < 0x1000 or not pattern.match_group(group):
            continue
        if (elem & 0xFF) & pattern.elem_mask != pattern.elem_value:
            continue
        key = (group, elem >> 8)
        if key not in creators:
            creators[key] = creator_of(ds, group, elem >> 8)
        if creators[key] == pattern.creator:
            out.append(t)
    return out


def sequence_items(ds: Dataset, tag: int) -> list[Dataset]:
    if element_vr(ds, tag) != "SQ":
        return []
    value = ds[tag].value
    return list(value) if value is not None else []


def _select_items(items: list[Dataset], item: int | str | None) -> list[Dataset]:
    if item is None or item == "%":
        return items
    assert isinstance(item, int)
    return [items[item]] if 0 <= item < len(items) else []


def _all_sequences(ds: Dataset) -> Iterator[Dataset]:
    for t in sorted(ds._dict):
        if t == 0x7FE00010:
            continue
        yield from sequence_items(ds, t)


def resolve(ds: Dataset, path: TagPath) -> list[tuple[Dataset, int]]:
    """Every existing element that `path` addresses, as (containing dataset, tag)."""
    out: list[tuple[Dataset, int]] = []
    _walk(ds, path.steps, 0, out)
    return out


def _walk(ds: Dataset, steps: tuple[Step, ...], i: int, out: list[tuple[Dataset, int]]) -> None:
    step = steps[i]
    last = i == len(steps) - 1
    if step.kind == "tag":
        assert step.pattern is not None
        for tag in matching_tags(ds, step.pattern):
            if last:
                out.append((ds, tag))
            else:
                for item in _select_items(sequence_items(ds, tag), step.item):
                    _walk(item, steps, i + 1, out)
        return
    if last:  # a trailing level wildcard addresses nothing
        return
    if step.kind == "*":
        _walk(ds, steps, i + 1, out)
        for item in _all_sequences(ds):
            _walk(item, steps, i, out)
    elif step.kind == "+":
        for item in _all_sequences(ds):
            _walk(item, steps[:i] + (Step("*"),) + steps[i + 1:], i, out)
    elif step.kind == ".":
        for item in _all_sequences(ds):
            _walk(item, steps, i + 1, out)


def resolve_items(ds: Dataset, path: TagPath) -> list[tuple[Dataset, int, int]]:
    """For a path ending in `seq[n]`: the addressed items as (dataset, sequence tag, index)."""
    head = TagPath.build(path.text, list(path.steps[:-1]) + [Step("tag", path.last.pattern, None)])
    out = []
    for parent, tag in resolve(ds, head):
        n = len(sequence_items(parent, tag))
        idx = path.last.item
        if idx == "%":
            out.extend((parent, tag, k) for k in range(n))
        elif isinstance(idx, int) and 0 <= idx < n:
            out.append((parent, tag, idx))
    return out
