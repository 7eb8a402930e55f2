"""The DicomEdit 6 interpreter: `Script.parse(text)` once, then `script.apply(ds, variables)` per file."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from . import functions as fn
from .errors import DicomEditRuntimeError, DicomEditSyntaxError
from .syntax import (
    Assign,
    Call,
    CallStmt,
    Condition,
    Delete,
    Describe,
    Echo,
    Export,
    IfBlock,
    Literal,
    Node,
    NumberLit,
    PathRef,
    Program,
    RemoveAllPrivate,
    SetVar,
    Ternary,
    Var,
    compile_regex,
    parse_program,
    parse_tagpath_text,
)
from .tagpath import (
    PathSet,
    TagPath,
    TreeIndex,
    element_vr,
    find_block,
    resolve,
    resolve_items,
)
from .values import ValueError_, default_vr, new_sequence, private_vr, read_string, store

Value = str | tuple[str, ...] | None


@dataclass
class ApplyResult:
    """What one application of a script did (never contains element values unless echoed)."""

    severity: str = "SUCCESS"  # SUCCESS, REJECT, ERROR
    rejected: bool = False
    messages: list[str] = field(default_factory=list)
    echo: list[str] = field(default_factory=list)
    variables: dict[str, str | None] = field(default_factory=dict)

    @property
    def echo_output(self) -> str:
        return "".join(line + "\n" for line in self.echo)


@dataclass(slots=True)
class _DeleteRun(Node):
    """Consecutive delete statements executed as one pass (built by `Script`, never by the parser)."""

    paths: PathSet
    count: int


def _batch_deletes(stmts: list[Node]) -> list[Node]:
    """Replace runs of consecutive batchable deletes (see PathSet) with one _DeleteRun each."""
    out: list[Node] = []
    run: list[Delete] = []

    def flush() -> None:
        if len(run) > 1:
            out.append(_DeleteRun(run[0].line, run[0].col, PathSet([d.path for d in run]), len(run)))
        else:
            out.extend(run)
        run.clear()

    for st in stmts:
        if isinstance(st, Delete) and PathSet.accepts(st.path):
            run.append(st)
            continue
        flush()
        if isinstance(st, IfBlock):
            st = IfBlock(st.line, st.col, [(c, _batch_deletes(body)) for c, body in st.branches],
                         _batch_deletes(st.otherwise) if st.otherwise is not None else None)
        out.append(st)
    flush()
    return out


class _Abort(Exception):
    """Internal: an evaluation error at a known position."""

    def __init__(self, message: str, node: Node | None = None) -> None:
        super().__init__(message)
        self.node = node


class Script:
    """A parsed DicomEdit 6 script. Immutable apart from the mapUID table, which is shared by design."""

    def __init__(self, text: str, program: Program) -> None:
        self.text = text
        self._program = program
        self.version = program.version
        self.descriptions = dict(program.descriptions)
        self.exports = dict(program.exports)
        self._uid_map: dict[str, str] = {}
        self._uid_lock = threading.Lock()
        self._path_cache: dict[str, TagPath] = {}
        self._regex_cache: dict[str, re.Pattern[str]] = {}
        self._statements = _batch_deletes(program.statements)

    @classmethod
    def parse(cls, text: str) -> Script:
        """Parse script text; DicomEditSyntaxError (with line/column) if it is not valid DicomEdit 6."""
        if not isinstance(text, str):
            raise TypeError("script text must be str")
        return cls(text, parse_program(text, fn.FUNCTION_NAMES))

    def apply(
        self,
        dataset: Dataset,
        variables: Mapping[str, str | None] | None = None,
        lookup_tables: Mapping[str, Mapping[str, str]] | None = None,
    ) -> ApplyResult:
        """Edit `dataset` in place; an evaluation error raises DicomEditRuntimeError, keeping changes."""
        run = _Run(self, dataset, variables or {}, lookup_tables or {})
        try:
            run.exec_block(self._statements)
        except fn.Rejected:
            pass
        except _Abort as e:
            run.result.severity = "ERROR"
            run.result.messages.append(str(e))
            line, col = (e.node.line, e.node.col) if e.node is not None else (0, 0)
            raise DicomEditRuntimeError(str(e), line, col, run.result) from None
        finally:
            run.finish()
        run.result.variables = dict(run.vars)
        return run.result

    # shared helpers used by functions
    def cached_path(self, text: str) -> TagPath:
        path = self._path_cache.get(text)
        if path is None:
            path = parse_tagpath_text(text)
            if len(self._path_cache) < 10000:
                self._path_cache[text] = path
        return path

    def cached_regex(self, pattern: str) -> re.Pattern[str]:
        rx = self._regex_cache.get(pattern)
        if rx is None:
            rx = compile_regex(pattern)
            if len(self._regex_cache) < 10000:
                self._regex_cache[pattern] = rx
        return rx

    def map_uid(self, value: str | None, prefix: str) -> str:
        from .hashuid import new_uid

        key = "" if value is None else value
        with self._uid_lock:
            mapped = self._uid_map.get(key)
            if mapped is None:
                mapped = new_uid(prefix)
                self._uid_map[key] = mapped
            return mapped


class _Run:
    """State of one apply(): the dataset, variables and the result being built."""

    def __init__(self, script: Script, ds: Dataset, variables: Mapping[str, str | None],
                 tables: Mapping[str, Mapping[str, str]]) -> None:
        self.script = script
        self.ds = ds
        self.vars: dict[str, Value] = {k: (None if v is None else str(v)) for k, v in variables.items()}
        self.tables = tables
        self.result = ApplyResult()
        charset = getattr(ds, "_character_set", None) or "iso8859"
        self.encodings = [charset] if isinstance(charset, str) else list(charset)
        enc = getattr(ds, "original_encoding", (None, None))
        implicit = enc[0] if enc[0] is not None else False
        little = enc[1] if enc[1] is not None else True
        self.encoding = (bool(implicit), bool(little))
        self.sop_uid_before = ds._dict.get(BaseTag(0x00080018))
        self.index = TreeIndex()

    def resolve(self, path: TagPath) -> list[tuple[Dataset, int]]:
        """Elements `path` addresses in this run's dataset (through the run's tree index)."""
        return resolve(self.ds, path, self.index)

    def store(self, ds: Dataset, tag: int, vr: str, value: str) -> None:
        """Write a value, telling the tree index when the element is new."""
        if tag not in ds._dict:
            self.index.added(ds)
        store(ds, tag, vr, value, self.encodings, self.encoding)

    # ---- statements ----------------------------------------------------------------------------
    def exec_block(self, stmts: list[Node]) -> None:
        for st in stmts:
            self.exec(st)

    def exec(self, st: Node) -> None:
        try:
            self._exec(st)
        except _Abort as e:
            if e.node is None:
                e.node = st
            raise
        except (ValueError_, DicomEditSyntaxError) as e:
            raise _Abort(getattr(e, "reason", str(e)), st) from None
        except RecursionError:
            raise _Abort("script nesting too deep", st) from None

    def _exec(self, st: Node) -> None:
        t = type(st)
        if t is Assign:
            assert isinstance(st, Assign)
            value = self.value(st.value)
            if value is None:
                return  # DicomEdit: assigning a null value changes nothing
            if isinstance(value, tuple):
                value = "\\".join(value)
            self.assign(st.path, value, st.only_if_present, st)
        elif t is _DeleteRun:
            assert isinstance(st, _DeleteRun)
            self.delete_set(st.paths)
        elif t is Delete:
            assert isinstance(st, Delete)
            self.delete(st.path)
        elif t is SetVar:
            assert isinstance(st, SetVar)
            self.vars[st.name] = self.value(st.value)
        elif t is Ternary:
            assert isinstance(st, Ternary)
            if self.condition(st.cond):
                self.exec(st.then)
            elif st.otherwise is not None:
                self.exec(st.otherwise)
        elif t is IfBlock:
            assert isinstance(st, IfBlock)
            for cond, body in st.branches:
                if self.condition(cond):
                    self.exec_block(body)
                    return
            if st.otherwise is not None:
                self.exec_block(st.otherwise)
        elif t is CallStmt:
            assert isinstance(st, CallStmt)
            self.call(st.call)
        elif t is Echo:
            assert isinstance(st, Echo)
            v = self.value(st.value) if st.value is not None else ""
            self.result.echo.append(self.as_text(v))
        elif t is RemoveAllPrivate:
            fn.remove_all_private(self.ds, self.index)
        elif t in (Describe, Export):
            return
        else:  # pragma: no cover - parser never builds anything else
            raise _Abort(f"unknown statement {t.__name__}", st)

    # ---- values --------------------------------------------------------------------------------
    def value(self, node: Node) -> Value:
        t = type(node)
        if t is Literal or t is NumberLit:
            return node.value  # type: ignore[attr-defined, no-any-return]
        if t is Var:
            assert isinstance(node, Var)
            return self.vars.get(node.name)
        if t is PathRef:
            assert isinstance(node, PathRef)
            return self.read_path(node.path)
        if t is Call:
            assert isinstance(node, Call)
            return self.call(node)
        raise _Abort("not a value", node)  # pragma: no cover

    def call(self, call: Call) -> Value:
        impl = fn.FUNCTIONS[call.name]
        try:
            return impl(self, call.args)
        except _Abort as e:
            if e.node is None:
                e.node = call
            raise
        except fn.FunctionError as e:
            raise _Abort(f"{call.name}: {e}", call) from None
        except ValueError_ as e:
            raise _Abort(f"{call.name}: {e}", call) from None

    @staticmethod
    def as_text(v: Value) -> str:
        if v is None:
            return ""
        if isinstance(v, tuple):
            return "\\".join(v)
        return v

    def read_path(self, path: TagPath) -> str | None:
        hits = resolve(self.ds, path, self.index)
        if not hits:
            return None
        parent, tag = hits[0]
        return read_string(parent, tag)

    def path_arg(self, node: Node) -> TagPath:
        if isinstance(node, PathRef):
            return node.path
        v = self.value(node)
        if v is None or isinstance(v, tuple):
            raise fn.FunctionError("expected a tag path")
        try:
            return self.script.cached_path(v.strip())
        except DicomEditSyntaxError as e:
            raise fn.FunctionError(f"invalid tag path argument: {e.reason}") from None

    def condition(self, cond: Condition) -> bool:
        left = self.value(cond.left)
        if cond.op is None:
            return fn.truthy(left)
        right = self.value(cond.right) if cond.right is not None else None
        if isinstance(left, tuple):
            left = "\\".join(left)
        if isinstance(right, tuple):
            right = "\\".join(right)
        if cond.op == "=":
            return left == right
        if cond.op == "!=":
            return left != right
        if right is None:
            raise _Abort("regular expression is missing", cond)
        rx = cond.regex or self.script.cached_regex(right)
        matched = left is not None and rx.fullmatch(left) is not None
        return matched if cond.op == "~" else not matched

    # ---- edits ---------------------------------------------------------------------------------
    def assign(self, path: TagPath, value: str, only_if_present: bool, node: Node | None = None) -> None:
        if not path.singular:
            raise _Abort(
                f"assigning to a tag path that maps to several attributes is not supported: {path.text}",
                node,
            )
        if only_if_present:
            hits = resolve(self.ds, path, self.index)
            if not hits:
                return
            parent, tag = hits[0]
            self.store(parent, tag, element_vr(parent, tag), value)
            return
        ds = self.ds
        steps = path.steps
        for i, step in enumerate(steps):
            pattern = step.pattern
            assert pattern is not None
            last = i == len(steps) - 1
            group = pattern.group_value
            if pattern.creator is None:
                tag = (group << 16) | pattern.elem_value
                new_vr = default_vr(tag)
            else:
                block = find_block(ds, group, pattern.creator)
                if block is None:
                    block = self._reserve_block(ds, group, pattern.creator)
                    new_vr = "UN"
                    tag = (group << 16) | (block << 8) | pattern.elem_value
                else:
                    tag = (group << 16) | (block << 8) | pattern.elem_value
                    new_vr = private_vr(tag, pattern.creator)
            if last:
                vr = element_vr(ds, tag) if tag in ds._dict else new_vr
                self.store(ds, tag, vr, value)
                return
            if tag in ds._dict:
                if element_vr(ds, tag) != "SQ":
                    raise _Abort(f"{pattern.text} is not a sequence", node)
                seq = ds[tag].value
            else:
                self.index.added(ds)
                seq = new_sequence(ds, tag)
            index = step.item
            assert isinstance(index, int)
            if len(seq) <= index:
                self.index.items_changed(ds)
                while len(seq) <= index:
                    seq.append(Dataset())
            ds = seq[index]

    def _reserve_block(self, ds: Dataset, group: int, creator: str) -> int:
        used = {t & 0xFF for t in ds._dict if t >> 16 == group and 0x10 <= (t & 0xFFFF) <= 0xFF}
        for block in range(0x10, 0x100):
            if block not in used:
                self.store(ds, (group << 16) | block, "LO", creator)
                return block
        raise _Abort(f"no free private block in group {group:04X}")

    def delete(self, path: TagPath) -> None:
        if path.last.item is not None:
            # deleting items of a sequence: remove from the end so indexes stay valid
            for parent, tag, idx in sorted(resolve_items(self.ds, path, self.index), key=lambda x: -x[2]):
                del parent[tag].value[idx]
                self.index.items_changed(parent)
            return
        for parent, tag in resolve(self.ds, path, self.index):
            if tag in parent._dict:
                del parent._dict[tag]
                self.index.deleted(parent, tag)

    def delete_set(self, paths: PathSet) -> None:
        """Delete what a run of statements addresses: top level first, then items top-down, so
        nothing is opened that is about to be deleted with its sequence."""
        index = self.index
        ds = self.ds
        d = ds._dict
        for tag in paths.top_hits(ds, index):
            if d.pop(tag, None) is not None:  # type: ignore[call-overload]
                index.deleted(ds, tag)
        if paths.has_deep:
            self._delete_deep(ds, paths)
        for path in paths.other:
            self.delete(path)

    def _delete_deep(self, ds: Dataset, paths: PathSet) -> None:
        index = self.index
        for item in index.items(ds):
            d = item._dict
            for tag in paths.deep_hits(item, index):
                del d[tag]
                index.deleted(item, tag)
            self._delete_deep(item, paths)

    # ---- end of run ----------------------------------------------------------------------------
    def finish(self) -> None:
        """Write-side fidelity with the real engine: undefined-length sequences, meta SOP UID in step."""
        ds = self.ds
        for tag, elem in list(ds._dict.items()):
            if isinstance(elem, RawDataElement):
                if elem.VR == "SQ" and elem.length != 0xFFFFFFFF:
                    ds._dict[tag] = elem._replace(length=0xFFFFFFFF)
            elif elem.VR == "SQ":
                elem.is_undefined_length = True
        sop = ds._dict.get(BaseTag(0x00080018))
        meta = getattr(ds, "file_meta", None)
        if sop is not None and sop is not self.sop_uid_before and meta is not None:
            try:
                uid = read_string(ds, 0x00080018)
            except ValueError_:
                return
            if uid:
                meta.MediaStorageSOPInstanceUID = uid


__all__ = ["ApplyResult", "Script"]
