"""DicomEdit 6 built-in functions.

Each takes the run state and the unevaluated argument nodes, because several functions take tag
paths (as paths or as strings) rather than values. Values are str, None (absent) or a tuple of
strings (a list, e.g. from collectValues).
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from .hashuid import hash_uid, new_uid
from .tagpath import TagPath, TreeIndex, element_vr
from .values import read_string

if TYPE_CHECKING:  # pragma: no cover
    from .engine import _Run
    from .syntax import Node

Value = str | tuple[str, ...] | None


class FunctionError(Exception):
    """A function was called with bad or missing arguments."""


def truthy(v: Value) -> bool:
    """Java Boolean.parseBoolean on the value's text."""
    return isinstance(v, str) and v.strip().lower() == "true"


def _bool(b: bool) -> str:
    return "true" if b else "false"


def _arity(args: list[Node], lo: int, hi: int | None, usage: str) -> None:
    if len(args) < lo or (hi is not None and len(args) > hi):
        raise FunctionError(f"wrong number of arguments; usage: {usage}")


def _text(run: _Run, node: Node, what: str = "argument") -> str:
    v = run.value(node)
    if v is None:
        raise FunctionError(f"{what} has no value (missing element or variable)")
    if isinstance(v, tuple):
        return "\\".join(v)
    return v


def _int(run: _Run, node: Node, what: str) -> int:
    s = _text(run, node, what).strip()
    try:
        return int(s)
    except ValueError:
        raise FunctionError(f"{what} must be an integer") from None


# ---- string functions ----------------------------------------------------------------------------

def f_uppercase(run: _Run, args: list[Node]) -> Value:
    _arity(args, 1, 1, "uppercase[value]")
    return _text(run, args[0], "value").upper()


def f_lowercase(run: _Run, args: list[Node]) -> Value:
    _arity(args, 1, 1, "lowercase[value]")
    return _text(run, args[0], "value").lower()


def f_replace(run: _Run, args: list[Node]) -> Value:
    _arity(args, 3, 3, "replace[value, target, replacement]")
    s = _text(run, args[0], "value")
    return s.replace(_text(run, args[1], "target"), _text(run, args[2], "replacement"))


def f_substring(run: _Run, args: list[Node]) -> Value:
    _arity(args, 2, 3, "substring[value, begin, end]")
    s = _text(run, args[0], "value")
    begin = _int(run, args[1], "begin")
    end = _int(run, args[2], "end") if len(args) == 3 else len(s)
    if begin < 0 or end > len(s) or begin > end:
        raise FunctionError(f"index out of range: begin {begin}, end {end}, length {len(s)}")
    return s[begin:end]


def f_concatenate(run: _Run, args: list[Node]) -> Value:
    return "".join(_text(run, a, f"argument {i + 1}") for i, a in enumerate(args))


def f_format(run: _Run, args: list[Node]) -> Value:
    _arity(args, 1, None, "format[pattern, args...]")
    pattern = _text(run, args[0], "pattern")
    values = [run.value(a) for a in args[1:]]
    return message_format(pattern, [None if v is None else run.as_text(v) for v in values])


def f_match(run: _Run, args: list[Node]) -> Value:
    _arity(args, 3, 3, "match[value, regex, group]")
    s = _text(run, args[0], "value")
    rx = run.script.cached_regex(_text(run, args[1], "regex"))
    group = _int(run, args[2], "group")
    m = rx.search(s)
    if m is None:
        return None
    if group < 0 or group > (rx.groups or 0):
        raise FunctionError(f"no group {group} in regex")
    return m.group(group)


def f_ismatch(run: _Run, args: list[Node]) -> Value:
    _arity(args, 2, 2, "ismatch[value, regex]")
    v = run.value(args[0])
    rx = run.script.cached_regex(_text(run, args[1], "regex"))
    if v is None:
        return "false"
    return _bool(rx.fullmatch(run.as_text(v)) is not None)


_NON_ASCII = re.compile(r"[^\x00-\x7F]")


def f_normalize_string(run: _Run, args: list[Node]) -> Value:
    _arity(args, 1, 2, "normalizeString[value, replacement]")
    v = run.value(args[0])
    repl = _text(run, args[1], "replacement") if len(args) == 2 else "_"
    if v is None:
        return None
    return _NON_ASCII.sub(lambda _m: repl, run.as_text(v))


# ---- values and lists ----------------------------------------------------------------------------

def _path_or_value_strings(run: _Run, node: Node) -> list[str]:
    from .syntax import PathRef

    if isinstance(node, PathRef):
        out = []
        for parent, tag in run.resolve(node.path):
            s = read_string(parent, tag)
            if s is not None:
                out.append(s)
        return out
    v = run.value(node)
    if v is None:
        return []
    return list(v) if isinstance(v, tuple) else [v]


def f_collect_values(run: _Run, args: list[Node]) -> Value:
    out: list[str] = []
    for a in args:
        out.extend(_path_or_value_strings(run, a))
    return tuple(out)


def f_value_at(run: _Run, args: list[Node]) -> Value:
    _arity(args, 2, 2, "valueAt[list, index]")
    v = run.value(args[0])
    index = _int(run, args[1], "index")
    if v is None:
        return None
    items = list(v) if isinstance(v, tuple) else v.split("\\")
    if 0 <= index < len(items):
        return items[index]
    return None


def f_lookup(run: _Run, args: list[Node]) -> Value:
    _arity(args, 2, 2, "lookup[table, key]")
    table = _text(run, args[0], "table")
    key = run.value(args[1])
    if key is None:
        return None
    values = run.tables.get(table)
    if values is None:
        return None
    return values.get(run.as_text(key))


# ---- booleans ------------------------------------------------------------------------------------

def f_is_present(run: _Run, args: list[Node]) -> Value:
    _arity(args, 1, 1, "isPresent[tagpath]")
    return _bool(bool(run.resolve(run.path_arg(args[0]))))


def f_and(run: _Run, args: list[Node]) -> Value:
    return _bool(all(truthy(run.value(a)) for a in args))


def f_or(run: _Run, args: list[Node]) -> Value:
    return _bool(any(truthy(run.value(a)) for a in args))


def f_equals(run: _Run, args: list[Node]) -> Value:
    _arity(args, 2, 2, "equals[a, b]")
    a, b = run.value(args[0]), run.value(args[1])
    if isinstance(a, tuple):
        a = "\\".join(a)
    if isinstance(b, tuple):
        b = "\\".join(b)
    return _bool(a == b)


def f_true(run: _Run, args: list[Node]) -> Value:
    _arity(args, 0, 0, "true[]")
    return "true"


def f_false(run: _Run, args: list[Node]) -> Value:
    _arity(args, 0, 0, "false[]")
    return "false"


# ---- UIDs ----------------------------------------------------------------------------------------

def f_hash_uid(run: _Run, args: list[Node]) -> Value:
    _arity(args, 1, 2, "hashUID[value]")
    v = run.value(args[0])
    if v is None:
        return None
    return hash_uid(run.as_text(v))


def f_hash_uid_list(run: _Run, args: list[Node]) -> Value:
    for a in args:
        for parent, tag in run.resolve(run.path_arg(a)):
            if _is_creator(tag):
                continue
            s = read_string(parent, tag)
            if s is None:
                continue
            hashed = "\\".join(hash_uid(x) for x in s.split("\\"))
            run.store(parent, tag, element_vr(parent, tag), hashed)
    return None


def f_new_uid(run: _Run, args: list[Node]) -> Value:
    _arity(args, 0, 1, "newUID[prefix]")
    prefix = _text(run, args[0], "prefix") if args else None
    return new_uid(prefix)


def f_map_uid(run: _Run, args: list[Node]) -> Value:
    _arity(args, 2, 2, "mapUID[value, prefix]")
    v = run.value(args[0])
    prefix = _text(run, args[1], "prefix")
    return run.script.map_uid(None if v is None else run.as_text(v), prefix)


def f_map_referenced_uids(run: _Run, args: list[Node]) -> Value:
    _arity(args, 2, None, "mapReferencedUIDs[prefix, tagpath...]")
    prefix = _text(run, args[0], "prefix")
    for a in args[1:]:
        for parent, tag in run.resolve(run.path_arg(a)):
            s = read_string(parent, tag)
            if not s:
                continue
            mapped = "\\".join(run.script.map_uid(x, prefix) for x in s.split("\\"))
            run.store(parent, tag, element_vr(parent, tag), mapped)
    return None


# ---- dates ---------------------------------------------------------------------------------------

_DT_RE = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?"
)
_UNITS = {
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}


def shift_datetime(text: str, increment: int, units: str = "seconds") -> str:
    """Shift a DICOM DA/DT string, keeping its precision, fraction and offset as written."""
    factor = _UNITS.get(units.strip().lower())
    if factor is None:
        raise FunctionError(f"unknown increment unit {units!r} (seconds, minutes, hours, days, weeks)")
    s = text.strip()
    m = _DT_RE.fullmatch(s)
    if m is None:
        raise FunctionError(f"Failed to parse DICOM date/time string of length {len(s)}")
    parts = m.groups()
    present = [p for p in parts[:6] if p is not None]
    # missing precision is filled with the midpoint of its range, as DicomEdit does
    defaults = [None, 7, 15, 12, 30, 30]
    nums = [int(p) if p is not None else defaults[i] for i, p in enumerate(parts[:6])]
    try:
        when = _dt.datetime(nums[0], nums[1], nums[2], nums[3], nums[4], nums[5])  # type: ignore[arg-type]
        when += _dt.timedelta(seconds=increment * factor)
    except (ValueError, OverflowError):
        raise FunctionError("date/time out of range") from None
    full = when.strftime("%Y%m%d%H%M%S")
    if when.year < 1000:
        full = f"{when.year:04d}" + full[-10:]
    widths = [4, 2, 2, 2, 2, 2]
    out = full[: sum(widths[: len(present)])]
    if parts[6] is not None:
        out += parts[6]
    if parts[7] is not None:
        out += parts[7]
    return out


def _date_arg(run: _Run, node: Node) -> str:
    from .syntax import PathRef

    if isinstance(node, PathRef):
        path = node.path
        if not path.singular:
            raise FunctionError(f"argument must resolve to a single attribute: {path.text}")
        hits = run.resolve(path)
        if hits:
            vr = element_vr(*hits[0])
            if vr not in ("DA", "DT"):
                raise FunctionError(f"argument must be an attribute with VR DA or DT, not {vr}")
            s = read_string(*hits[0])
        else:
            s = None
        return s or ""
    v = run.value(node)
    return "" if v is None else run.as_text(v)


def f_shift_datetime(run: _Run, args: list[Node]) -> Value:
    _arity(args, 2, 3, "shiftDateTimeByIncrement[datetime, increment, units]")
    s = _date_arg(run, args[0])
    inc = _int(run, args[1], "increment")
    units = _text(run, args[2], "units") if len(args) == 3 else "seconds"
    return shift_datetime(s, inc, units)


def f_shift_date(run: _Run, args: list[Node]) -> Value:
    _arity(args, 2, 2, "shiftDateByIncrement[date, days]")
    s = _date_arg(run, args[0])
    return shift_datetime(s, _int(run, args[1], "increment"), "days")


def _shift_all(run: _Run, path: TagPath, inc: int, units: str, skip_errors: bool) -> None:
    for parent, tag in run.resolve(path):
        s = read_string(parent, tag)
        if not s:
            continue
        try:
            shifted = "\\".join(shift_datetime(x, inc, units) if x else x for x in s.split("\\"))
        except FunctionError:
            if skip_errors:
                continue
            raise
        run.store(parent, tag, element_vr(parent, tag), shifted)


def f_shift_datetime_list(run: _Run, args: list[Node]) -> Value:
    _arity(args, 3, 3, "shiftDateTimeListByIncrement[tagpaths, increment, units]")
    inc = _int(run, args[1], "increment")
    units = _text(run, args[2], "units")
    v = run.value(args[0]) if not _is_pathref(args[0]) else None
    paths = [run.path_arg(args[0])] if v is None or isinstance(v, str) else [
        run.script.cached_path(x) for x in v
    ]
    for p in paths:
        _shift_all(run, p, inc, units, skip_errors=False)
    return None


def f_shift_datetime_sequence(run: _Run, args: list[Node]) -> Value:
    _arity(args, 2, None, "shiftDateTimeSequenceByIncrement[seconds, tagpath...]")
    inc = _int(run, args[0], "increment")
    for a in args[1:]:
        _shift_all(run, run.path_arg(a), inc, "seconds", skip_errors=True)
    return None


def _is_pathref(node: Node) -> bool:
    from .syntax import PathRef

    return isinstance(node, PathRef)


# ---- element edits -------------------------------------------------------------------------------

def f_set(run: _Run, args: list[Node]) -> Value:
    _arity(args, 2, 2, "set[tagpath, value]")
    path = run.path_arg(args[0])
    v = run.value(args[1])
    if v is not None:
        run.assign(path, run.as_text(v), False)
    return None


def f_delete(run: _Run, args: list[Node]) -> Value:
    _arity(args, 1, None, "delete[tagpath...]")
    for a in args:
        run.delete(run.path_arg(a))
    return None


def f_remove_tags(run: _Run, args: list[Node]) -> Value:
    for a in args:
        v = None if _is_pathref(a) else run.value(a)
        if isinstance(v, tuple):
            for x in v:
                run.delete(run.script.cached_path(x))
        else:
            run.delete(run.path_arg(a))
    return None


def f_blank_values(run: _Run, args: list[Node]) -> Value:
    for a in args:
        for parent, tag in run.resolve(run.path_arg(a)):
            vr = element_vr(parent, tag)
            if vr == "SQ":
                continue
            run.store(parent, tag, vr, "")
    return None


def _is_creator(tag: int) -> bool:
    return bool((tag >> 16) & 1) and 0x10 <= (tag & 0xFFFF) <= 0xFF


def remove_all_private(ds: Dataset, index: TreeIndex | None = None) -> None:
    """Delete every odd-group element (creators included) at every level of the dataset."""
    index = index or TreeIndex()
    _remove_private(ds, index)
    index.clear()


def _remove_private(ds: Dataset, index: TreeIndex) -> None:
    d = ds._dict
    for tag in [t for t in d if (t >> 16) & 1]:
        del d[tag]
    for tag, items in index.sequences(ds).items():
        if not (tag >> 16) & 1:
            for item in items:
                _remove_private(item, index)


def f_remove_all_private(run: _Run, args: list[Node]) -> Value:
    _arity(args, 0, 0, "removeAllPrivateTags[]")
    remove_all_private(run.ds, run.index)
    return None


def f_retain_private(run: _Run, args: list[Node]) -> Value:
    keep: set[tuple[int, int]] = set()
    for a in args:
        path = run.path_arg(a)
        if not path.is_private_leaf:
            raise FunctionError(f"argument must be a private tag path: {path.text}")
        for parent, tag in run.resolve(path):
            keep.add((id(parent), tag))
            keep.add((id(parent), (tag & 0xFFFF0000) | ((tag >> 8) & 0xFF)))
    _retain(run.ds, keep, run.index)
    run.index.clear()
    return None


def _retain(ds: Dataset, keep: set[tuple[int, int]], index: TreeIndex) -> None:
    d = ds._dict
    key = id(ds)
    for tag in [t for t in d if (t >> 16) & 1]:
        if (key, tag) not in keep:
            del d[tag]
    for tag, items in index.sequences(ds).items():
        if not (tag >> 16) & 1:
            for item in items:
                _retain(item, keep, index)


# ---- control -------------------------------------------------------------------------------------

class Rejected(Exception):
    """Internal: reject[] ran; the object must not be stored, so evaluation stops."""


def f_reject(run: _Run, args: list[Node]) -> Value:
    # reject[] rejects unconditionally; with arguments they act as a condition (all must be true),
    # as the 6.6 engine does not reject on a non-boolean argument such as a message string.
    if args and not all(truthy(run.value(a)) for a in args):
        return None
    run.result.rejected = True
    run.result.severity = "REJECT"
    run.result.messages.append("rejected by script")
    raise Rejected()


def f_echo(run: _Run, args: list[Node]) -> Value:
    run.result.echo.append(" ".join(run.as_text(run.value(a)) for a in args))
    return None


def f_alter_pixels(run: _Run, args: list[Node]) -> Value:
    from .pixels import alter_pixels

    _arity(args, 4, 4, "alterPixels[shape, shape-parameters, fill, fill-parameters]")
    alter_pixels(run.ds, *(_text(run, a) for a in args))
    return None


# ---- Java MessageFormat --------------------------------------------------------------------------

def message_format(pattern: str, args: list[str | None]) -> str:
    """java.text.MessageFormat.format with string arguments ({n}, {n,number[,style]}, quoting)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "'":
            if i + 1 < n and pattern[i + 1] == "'":
                out.append("'")
                i += 2
                continue
            j = i + 1
            while j < n:
                if pattern[j] == "'":
                    if j + 1 < n and pattern[j + 1] == "'":
                        out.append("'")
                        j += 2
                        continue
                    break
                out.append(pattern[j])
                j += 1
            i = j + 1
            continue
        if c == "{":
            depth, j = 1, i + 1
            while j < n and depth:
                if pattern[j] == "{":
                    depth += 1
                elif pattern[j] == "}":
                    depth -= 1
                j += 1
            if depth:
                raise FunctionError("unmatched braces in the pattern")
            out.append(_format_arg(pattern[i + 1: j - 1], args))
            i = j
            continue
        if c == "}":
            raise FunctionError("unmatched braces in the pattern")
        out.append(c)
        i += 1
    return "".join(out)


def _format_arg(spec: str, args: list[str | None]) -> str:
    parts = [p.strip() for p in spec.split(",", 2)]
    try:
        index = int(parts[0])
    except ValueError:
        raise FunctionError(f"can't parse argument number: {parts[0]!r}") from None
    if index < 0:
        raise FunctionError("negative argument number")
    if index >= len(args):
        return "{" + parts[0] + "}"
    value = args[index]
    if value is None:
        return "null"
    if len(parts) == 1:
        return value
    kind = parts[1].lower()
    style = parts[2] if len(parts) > 2 else ""
    if kind != "number":
        raise FunctionError(f"format type {kind!r} cannot format a string")
    try:
        num = Decimal(value.strip())
    except InvalidOperation:
        raise FunctionError("cannot format given value as a number") from None
    return _format_number(num, style)


def _format_number(num: Decimal, style: str) -> str:
    s = style.strip().lower()
    if s == "":
        return _decimal_format(num, "#,##0.###")
    if s == "integer":
        return _decimal_format(num, "#,##0")
    if s == "percent":
        return _decimal_format(num * 100, "#,##0") + "%"
    return _decimal_format(num, style)


def _decimal_format(num: Decimal, pattern: str) -> str:
    """Subset of java.text.DecimalFormat: 0 # , . with half-even rounding, literal prefix/suffix."""
    m = re.fullmatch(r"([^#0,.]*)([#0,]*)(?:\.([#0]*))?([^#0,.]*)", pattern)
    if m is None or not m.group(2) and not m.group(3):
        raise FunctionError("unsupported number pattern")
    prefix, int_part, frac_part, suffix = m.group(1), m.group(2), m.group(3) or "", m.group(4)
    min_int = int_part.count("0")
    grouping = 0
    if "," in int_part:
        grouping = len(int_part) - int_part.rfind(",") - 1
    min_frac = frac_part.count("0")
    max_frac = len(frac_part)
    q = num.quantize(Decimal(1).scaleb(-max_frac), rounding=ROUND_HALF_EVEN)
    neg = q < 0
    digits = f"{abs(q):f}"
    ip, _, fp = digits.partition(".")
    ip = ip.lstrip("0")
    ip = ip.rjust(min_int, "0") if min_int else ip
    fp = fp.rstrip("0")
    fp = fp.ljust(min_frac, "0")
    if grouping and ip:
        groups = []
        while len(ip) > grouping:
            groups.insert(0, ip[-grouping:])
            ip = ip[:-grouping]
        groups.insert(0, ip)
        ip = ",".join(groups)
    text = ip + ("." + fp if fp else "")
    if not text:
        text = "0"
    return ("-" if neg and any(ch in "123456789" for ch in text) else "") + prefix + text + suffix


FUNCTIONS: dict[str, Callable[[Any, list[Any]], Value]] = {
    "uppercase": f_uppercase,
    "lowercase": f_lowercase,
    "replace": f_replace,
    "substring": f_substring,
    "format": f_format,
    "concatenate": f_concatenate,
    "match": f_match,
    "ismatch": f_ismatch,
    "normalizeString": f_normalize_string,
    "collectValues": f_collect_values,
    "valueAt": f_value_at,
    "hashUID": f_hash_uid,
    "hashUIDList": f_hash_uid_list,
    "newUID": f_new_uid,
    "mapUID": f_map_uid,
    "mapReferencedUIDs": f_map_referenced_uids,
    "shiftDateTimeByIncrement": f_shift_datetime,
    "shiftDateByIncrement": f_shift_date,
    "shiftDateTimeListByIncrement": f_shift_datetime_list,
    "shiftDateTimeSequenceByIncrement": f_shift_datetime_sequence,
    "set": f_set,
    "delete": f_delete,
    "removeTags": f_remove_tags,
    "blankValues": f_blank_values,
    "retainPrivateTags": f_retain_private,
    "removeAllPrivateTags": f_remove_all_private,
    "isPresent": f_is_present,
    "and": f_and,
    "or": f_or,
    "equals": f_equals,
    "true": f_true,
    "false": f_false,
    "lookup": f_lookup,
    "reject": f_reject,
    "echo": f_echo,
    "alterPixels": f_alter_pixels,
}

FUNCTION_NAMES = frozenset(FUNCTIONS)
