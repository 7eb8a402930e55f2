"""Tag patterns and tag paths, and how they find elements in a pydicom Dataset.

Lookups only convert what they must: exact public tags are a dict lookup, wildcard patterns are
(mask, value) integer tests over a bisected slice of the dataset's sorted tags, and sequences are
only opened when a path descends into them. PixelData is never read.

A `TreeIndex` caches, for the length of one script application, each dataset's sorted tags and its
sequence items, so the many `+/` and `*/` paths of a de-identification script do not re-sort and
re-inspect every element for every statement. The engine tells it about structural edits.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

HEXISH = "0123456789abcdefABCDEFxX@#"
PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True)
class TagPattern:
    """One `(gggg,eeee)` or `(gggg,{Creator}ee)`, possibly with X/@/# digit wildcards."""

    text: str
    group_mask: int
    group_value: int
    elem_mask: int  # 16 bits for public, 8 bits (low byte) for private
    elem_value: int
    creator: str | None = None
    # derived at construction: the exact public tag (or None), and for public patterns a 32-bit
    # mask/value test plus the [lo, hi] tag range every match falls in (for bisecting sorted tags)
    exact: int | None = field(init=False, compare=False, repr=False)
    mask: int = field(init=False, compare=False, repr=False)
    value: int = field(init=False, compare=False, repr=False)
    lo: int = field(init=False, compare=False, repr=False)
    hi: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        gm, gv = self.group_mask, self.group_value
        group_hi = gv | (~gm & 0xFFFF)
        if self.creator is None:
            mask = (gm << 16) | self.elem_mask
            value = (gv << 16) | self.elem_value
            lo, hi = value, value | (~mask & 0xFFFFFFFF)
        else:
            mask = value = 0
            lo, hi = (gv << 16) | 0x1000, (group_hi << 16) | 0xFFFF
        exact = value if self.creator is None and mask == 0xFFFFFFFF else None
        for name, v in (("exact", exact), ("mask", mask), ("value", value), ("lo", lo), ("hi", hi)):
            object.__setattr__(self, name, v)

    @property
    def is_private(self) -> bool:
        return self.creator is not None

    @property
    def is_exact(self) -> bool:
        return self.group_mask == 0xFFFF and self.elem_mask == (0xFF if self.creator is not None else 0xFFFF)

    @property
    def exact_tag(self) -> int | None:
        return self.exact

    def match_group(self, group: int) -> bool:
        return group & self.group_mask == self.group_value

    def match_public(self, tag: int) -> bool:
        return tag & self.mask == self.value


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
    for tag in sorted(int(t) for t in ds._dict if lo <= t <= hi):
        if creator_of(ds, group, tag & 0xFF) == creator:
            return tag & 0xFF
    return None


class _Entry:
    """What the index knows about one dataset; holds the dataset so its id() cannot be reused."""

    __slots__ = ("ds", "keys", "seqs", "items")

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.keys: list[int] | None = None  # sorted tags (may hold deleted ones: callers re-check)
        self.seqs: dict[int, list[Dataset]] | None = None  # sequence tag -> its items, tag order
        self.items: list[Dataset] | None = None  # all items of all sequences, tag order


class TreeIndex:
    """Per-application cache of sorted tags and sequence items of each dataset in the tree.

    Valid as long as every structural edit is reported: `added` (a new element in a dataset),
    `deleted` (an element removed), `items_changed` (items added to / removed from a sequence) and
    `clear` (anything else). Replacing the value of an existing non-sequence element needs nothing.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}

    def _entry(self, ds: Dataset) -> _Entry:
        e = self._entries.get(id(ds))
        if e is None:
            e = self._entries[id(ds)] = _Entry(ds)
        return e

    def keys(self, ds: Dataset) -> list[int]:
        e = self._entry(ds)
        if e.keys is None:
            e.keys = sorted(int(t) for t in ds._dict)
        return e.keys

    def _build_seqs(self, ds: Dataset, e: _Entry) -> dict[int, list[Dataset]]:
        d = ds._dict
        seqs: dict[int, list[Dataset]] = {}
        flat: list[Dataset] = []
        for tag in self.keys(ds):
            elem = d.get(tag)
            if elem is None or tag == PIXEL_DATA:
                continue
            vr = elem.VR or element_vr(ds, tag)
            if vr != "SQ":
                continue
            value = ds[tag].value
            items = list(value) if value is not None else []
            seqs[tag] = items
            flat.extend(items)
        e.seqs, e.items = seqs, flat
        return seqs

    def sequence_items(self, ds: Dataset, tag: int) -> list[Dataset]:
        """Items of the sequence `tag` in `ds` ([] if absent or not a sequence)."""
        e = self._entry(ds)
        seqs = e.seqs if e.seqs is not None else self._build_seqs(ds, e)
        return seqs.get(tag, [])

    def sequences(self, ds: Dataset) -> dict[int, list[Dataset]]:
        e = self._entry(ds)
        return e.seqs if e.seqs is not None else self._build_seqs(ds, e)

    def items(self, ds: Dataset) -> list[Dataset]:
        """Every item of every sequence in `ds` (pixel data excepted), in tag order."""
        e = self._entry(ds)
        if e.items is None:
            self._build_seqs(ds, e)
        assert e.items is not None
        return e.items

    def added(self, ds: Dataset) -> None:
        e = self._entries.get(id(ds))
        if e is not None:
            e.keys = e.seqs = e.items = None

    def deleted(self, ds: Dataset, tag: int) -> None:
        e = self._entries.get(id(ds))
        if e is not None and e.seqs is not None and tag in e.seqs:
            e.seqs = e.items = None

    def items_changed(self, ds: Dataset) -> None:
        e = self._entries.get(id(ds))
        if e is not None:
            e.seqs = e.items = None

    def clear(self) -> None:
        self._entries.clear()


def matching_tags(ds: Dataset, pattern: TagPattern, index: TreeIndex | None = None) -> list[int]:
    """Tags in `ds` (this level only) that match `pattern`, in tag order."""
    exact = pattern.exact
    d = ds._dict
    if exact is not None:
        return [exact] if exact in d else []
    keys = (index or TreeIndex()).keys(ds)
    lo, hi = bisect_left(keys, pattern.lo), bisect_right(keys, pattern.hi)
    if pattern.creator is None:
        mask, value = pattern.mask, pattern.value
        return [t for t in keys[lo:hi] if t & mask == value and t in d]
    out = []
    creators: dict[tuple[int, int], str | None] = {}
    gm, gv, em, ev = pattern.group_mask, pattern.group_value, pattern.elem_mask, pattern.elem_value
    for t in keys[lo:hi]:
        group, elem = t >> 16, t & 0xFFFF
        if not group & 1 or elem < 0x1000 or group & gm != gv or (elem & 0xFF) & em != ev:
            continue
        if t not in d:
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


def resolve(ds: Dataset, path: TagPath, index: TreeIndex | None = None) -> list[tuple[Dataset, int]]:
    """Every existing element that `path` addresses, as (containing dataset, tag)."""
    steps = path.steps
    if len(steps) == 1 and steps[0].pattern is not None and steps[0].pattern.exact is not None:
        tag = steps[0].pattern.exact  # the common case: one public tag at the top level
        return [(ds, tag)] if tag in ds._dict else []
    out: list[tuple[Dataset, int]] = []
    _walk(ds, path.steps, 0, out, index or TreeIndex())
    return out


def _walk(ds: Dataset, steps: tuple[Step, ...], i: int, out: list[tuple[Dataset, int]],
          index: TreeIndex) -> None:
    step = steps[i]
    last = i == len(steps) - 1
    if step.kind == "tag":
        assert step.pattern is not None
        for tag in matching_tags(ds, step.pattern, index):
            if last:
                out.append((ds, tag))
            else:
                for item in _select_items(index.sequence_items(ds, tag), step.item):
                    _walk(item, steps, i + 1, out, index)
        return
    if last:  # a trailing level wildcard addresses nothing
        return
    if step.kind == "*":  # this level and every level below
        _star(ds, steps, i, out, index)
    elif step.kind == "+":  # every level below this one
        for item in index.items(ds):
            _star(item, steps, i, out, index)
    elif step.kind == ".":  # exactly one level below
        for item in index.items(ds):
            _walk(item, steps, i + 1, out, index)


def _star(ds: Dataset, steps: tuple[Step, ...], i: int, out: list[tuple[Dataset, int]],
          index: TreeIndex) -> None:
    _walk(ds, steps, i + 1, out, index)
    for item in index.items(ds):
        _star(item, steps, i, out, index)


def resolve_items(ds: Dataset, path: TagPath,
                  index: TreeIndex | None = None) -> list[tuple[Dataset, int, int]]:
    """For a path ending in `seq[n]`: the addressed items as (dataset, sequence tag, index)."""
    index = index or TreeIndex()
    head = TagPath.build(path.text, list(path.steps[:-1]) + [Step("tag", path.last.pattern, None)])
    out = []
    for parent, tag in resolve(ds, head, index):
        n = len(index.sequence_items(parent, tag))
        idx = path.last.item
        if idx == "%":
            out.extend((parent, tag, k) for k in range(n))
        elif isinstance(idx, int) and 0 <= idx < n:
            out.append((parent, tag, idx))
    return out


class PathSet:
    """Paths matched together: what a run of consecutive delete statements addresses.

    `tag` paths match at the top level, `+/tag` in every sequence item at any depth, `*/tag` in
    both; anything else is resolved path by path. Only public-tag paths without a trailing item
    selector belong here: deleting elements then never changes what another such path addresses
    (no private creator lookups, no item renumbering), so one pass equals the statements in order.
    """

    __slots__ = ("top_exact", "top_wild", "deep_exact", "deep_by_group", "deep_any_group", "other")

    def __init__(self, paths: list[TagPath]) -> None:
        self.top_exact: list[int] = []
        self.top_wild: list[TagPattern] = []
        self.deep_exact: set[int] = set()
        self.deep_by_group: dict[int, list[tuple[int, int]]] = {}
        self.deep_any_group: list[tuple[int, int]] = []
        self.other: list[TagPath] = []
        for path in paths:
            steps = path.steps
            pattern = steps[-1].pattern
            if pattern is None or len(steps) > 2 or (len(steps) == 2 and steps[0].kind not in "*+"):
                self.other.append(path)
                continue
            if len(steps) == 1 or steps[0].kind == "*":
                if pattern.exact is not None:
                    self.top_exact.append(pattern.exact)
                else:
                    self.top_wild.append(pattern)
            if len(steps) == 2:
                if pattern.exact is not None:
                    self.deep_exact.add(pattern.exact)
                elif pattern.group_mask == 0xFFFF:
                    group = self.deep_by_group.setdefault(pattern.group_value, [])
                    group.append((pattern.mask, pattern.value))
                else:
                    self.deep_any_group.append((pattern.mask, pattern.value))
        self.top_exact = sorted(set(self.top_exact))

    @staticmethod
    def accepts(path: TagPath) -> bool:
        return path.last.item is None and all(
            st.pattern is None or st.pattern.creator is None for st in path.steps
        )

    @property
    def has_deep(self) -> bool:
        return bool(self.deep_exact or self.deep_by_group or self.deep_any_group)

    def top_hits(self, ds: Dataset, index: TreeIndex) -> list[int]:
        d = ds._dict
        hits = [t for t in self.top_exact if t in d]
        for pattern in self.top_wild:
            hits.extend(matching_tags(ds, pattern, index))
        return hits

    def deep_hits(self, item: Dataset, index: TreeIndex) -> list[int]:
        """Tags of `item` (a sequence item) that a `+/` or `*/` path of the set addresses."""
        exact, by_group, any_group = self.deep_exact, self.deep_by_group, self.deep_any_group
        d = item._dict
        hits = []
        for t in index.keys(item):
            if t in exact:
                pass
            else:
                pats = by_group.get(t >> 16)
                if not (pats and any(t & m == v for m, v in pats)) and not (
                        any_group and any(t & m == v for m, v in any_group)):
                    continue
            if t in d:
                hits.append(t)
        return hits
