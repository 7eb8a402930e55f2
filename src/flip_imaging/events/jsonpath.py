"""XNAT's subscription payload filter: a Jayway-JsonPath predicate evaluated as ``$[?(<filter>)]``.

XNAT evaluates the filter with Jayway JsonPath on the serialized event object, so subscriptions written for
XNAT use Jayway's predicate syntax (``@.modality == 'MR' && @.label =~ /.*_T1/i``). jsonpath-ng speaks a
different dialect, hence this small, strict parser for the predicate subset:

- paths: ``@.a.b``, ``@['scan-type']``, ``@.list[0]``, ``$.x`` (the root is the payload itself); property
  names may contain ``-`` as XNAT's payload keys do (``@.scan-type``);
- literals: ``'text'``, ``"text"``, numbers, ``true``, ``false``, ``null``, lists ``['a', 'b']``,
  regexes ``/.../i``;
- operators: ``== != < <= > >= =~ in nin contains subsetof anyof noneof size empty``, ``&& || !`` and
  parentheses; a bare path tests that the value exists.

Semantics follow Jayway: ``=~`` must match the whole string; a comparison with a missing value is false,
except ``!=`` and ``nin`` which are true.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class FilterSyntaxError(ValueError):
    """The predicate cannot be parsed; the message says where and why."""


_MISSING = object()

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<op>==|!=|<=|>=|=~|&&|\|\||<|>|!|\(|\)|\[|\]|,|\.)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
  | (?P<regex>/(?:[^/\\]|\\.)+/[a-z]*)
  | (?P<root>[@$])
  | (?P<word>[A-Za-z_][A-Za-z0-9_\-]*)
""", re.VERBOSE)

_WORD_OPS = {"in", "nin", "contains", "subsetof", "anyof", "noneof", "size", "empty"}
_COMPARE = {"==", "!=", "<", "<=", ">", ">=", "=~"} | _WORD_OPS


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FilterSyntaxError(f"unexpected character {text[pos]!r} at position {pos}")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    return out


def _unquote(s: str) -> str:
    body = s[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


Node = Callable[[Any], Any]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise FilterSyntaxError("unexpected end of filter")
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            raise FilterSyntaxError(f"expected {text!r} at position {tok.pos}, found {tok.text!r}")

    def parse(self) -> Callable[[Any], bool]:
        if not self.toks:
            raise FilterSyntaxError("empty filter")
        node = self.or_expr()
        if self.peek() is not None:
            tok = self.peek()
            assert tok is not None
            raise FilterSyntaxError(f"unexpected {tok.text!r} at position {tok.pos}")
        return node

    def or_expr(self) -> Callable[[Any], bool]:
        parts = [self.and_expr()]
        while (tok := self.peek()) is not None and tok.text == "||":
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else (lambda doc: any(p(doc) for p in parts))

    def and_expr(self) -> Callable[[Any], bool]:
        parts = [self.unary()]
        while (tok := self.peek()) is not None and tok.text == "&&":
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda doc: all(p(doc) for p in parts))

    def unary(self) -> Callable[[Any], bool]:
        tok = self.peek()
        if tok is not None and tok.text == "!":
            self.take()
            inner = self.unary()
            return lambda doc: not inner(doc)
        if tok is not None and tok.text == "(":
            self.take()
            inner = self.or_expr()
            self.expect(")")
            return inner
        return self.comparison()

    def comparison(self) -> Callable[[Any], bool]:
        left, left_is_path = self.operand()
        tok = self.peek()
        if tok is None or tok.text not in _COMPARE:
            if not left_is_path:
                raise FilterSyntaxError("a literal alone is not a predicate" if tok is None
                                        else f"expected an operator at position {tok.pos}")
            return lambda doc: left(doc) is not _MISSING
        op = self.take().text
        if op == "=~":
            rtok = self.take()
            if rtok.kind != "regex":
                raise FilterSyntaxError(f"=~ needs a /regex/ at position {rtok.pos}")
            body, _, flags = rtok.text[1:].rpartition("/")
            unknown = set(flags) - {"i", "m", "s"}
            if unknown:
                raise FilterSyntaxError(f"unknown regex flag(s) {''.join(sorted(unknown))!r}")
            fl = (re.I if "i" in flags else 0) | (re.M if "m" in flags else 0) | (re.S if "s" in flags else 0)
            try:
                rx = re.compile(body, fl)
            except re.error as exc:
                raise FilterSyntaxError(f"bad regex {rtok.text}: {exc}") from exc
            return lambda doc: isinstance(v := left(doc), str) and rx.fullmatch(v) is not None
        right, _ = self.operand()
        return _binary(op, left, right)

    def operand(self) -> tuple[Node, bool]:
        tok = self.take()
        if tok.kind == "root":
            return self.path(), True
        if tok.kind == "str":
            value: Any = _unquote(tok.text)
        elif tok.kind == "num":
            value = float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
        elif tok.kind == "word" and tok.text in ("true", "false", "null"):
            value = {"true": True, "false": False, "null": None}[tok.text]
        elif tok.text == "[":
            items: list[Any] = []
            while True:
                nxt = self.peek()
                if nxt is not None and nxt.text == "]" and not items:
                    self.take()
                    break
                item, is_path = self.operand()
                if is_path:
                    raise FilterSyntaxError(f"lists may hold literals only (position {tok.pos})")
                items.append(item(None))
                sep = self.take()
                if sep.text == "]":
                    break
                if sep.text != ",":
                    raise FilterSyntaxError(f"expected ',' or ']' at position {sep.pos}")
            value = items
        else:
            raise FilterSyntaxError(f"unexpected {tok.text!r} at position {tok.pos}")
        return (lambda _doc, v=value: v), False

    def path(self) -> Node:
        steps: list[str | int] = []
        while (tok := self.peek()) is not None and tok.text in (".", "["):
            self.take()
            if tok.text == ".":
                name = self.take()
                if name.kind != "word":
                    raise FilterSyntaxError(f"expected a property name at position {name.pos}")
                steps.append(name.text)
            else:
                key = self.take()
                if key.kind == "str":
                    steps.append(_unquote(key.text))
                elif key.kind == "num" and key.text.lstrip("-").isdigit():
                    steps.append(int(key.text))
                else:
                    raise FilterSyntaxError(f"expected a quoted name or an index at position {key.pos}")
                self.expect("]")

        def resolve(doc: Any) -> Any:
            cur = doc
            for step in steps:
                if isinstance(step, str) and isinstance(cur, dict) and step in cur:
                    cur = cur[step]
                elif isinstance(step, int) and isinstance(cur, list) and -len(cur) <= step < len(cur):
                    cur = cur[step]
                else:
                    return _MISSING
            return cur

        return resolve


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _eq(a: Any, b: Any) -> bool:
    if _num(a) and _num(b):
        return a == b
    return type(a) is type(b) and a == b


def _order(a: Any, b: Any, test: Callable[[Any, Any], bool]) -> bool:
    if (_num(a) and _num(b)) or (isinstance(a, str) and isinstance(b, str)):
        return test(a, b)
    return False


def _binary(op: str, left: Node, right: Node) -> Callable[[Any], bool]:
    def run(doc: Any) -> bool:
        a, b = left(doc), right(doc)
        if a is _MISSING or b is _MISSING:
            return op in ("!=", "nin")
        if op == "==":
            return _eq(a, b)
        if op == "!=":
            return not _eq(a, b)
        if op in ("<", "<=", ">", ">="):
            return _order(a, b, {"<": lambda x, y: x < y, "<=": lambda x, y: x <= y,
                                 ">": lambda x, y: x > y, ">=": lambda x, y: x >= y}[op])
        if op == "in":
            return isinstance(b, list) and any(_eq(a, x) for x in b)
        if op == "nin":
            return isinstance(b, list) and not any(_eq(a, x) for x in b)
        if op == "contains":
            if isinstance(a, str) and isinstance(b, str):
                return b in a
            return isinstance(a, list) and any(_eq(x, b) for x in a)
        if op == "subsetof":
            return isinstance(a, list) and isinstance(b, list) and all(any(_eq(x, y) for y in b) for x in a)
        if op == "anyof":
            return isinstance(a, list) and isinstance(b, list) and any(any(_eq(x, y) for y in b) for x in a)
        if op == "noneof":
            return isinstance(a, list) and isinstance(b, list) and not any(any(_eq(x, y) for y in b)
                                                                          for x in a)
        if op == "size":
            return _num(b) and isinstance(a, list | str | dict) and len(a) == b
        if op == "empty":
            return isinstance(b, bool) and isinstance(a, list | str | dict) and (len(a) == 0) == b
        raise AssertionError(op)

    return run


def compile_predicate(text: str) -> Callable[[Any], bool]:
    """Compile a payload filter; raises :class:`FilterSyntaxError` with a readable reason.

    A filter written in full form (``$[?(...)]``) is accepted too and unwrapped, since users paste both.
    """
    stripped = text.strip()
    m = re.fullmatch(r"\$\[\?\((.*)\)\]", stripped, re.S)
    if m:
        stripped = m.group(1)
    return _Parser(stripped).parse()


def matches(text: str | None, payload: Any) -> bool:
    """Whether ``payload`` passes the filter (no filter: always)."""
    if not text or not text.strip():
        return True
    return bool(compile_predicate(text)(payload))
