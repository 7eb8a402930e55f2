"""Wrapper-input matchers: the small JSONPath-filter language XNAT commands use.

XNAT evaluates a matcher as ``$[?(<matcher>)]`` against the input object's JSON. Commands in the wild use a
handful of forms, which are what this supports::

    'DICOM' in @.resources[*].label        @.label == 'DICOM'        @.modality != 'SR'
    @.scan-type =~ /T1.*/                  @.frames                  a && b || c   (&& binds tighter)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Matcher = Callable[[dict[str, Any]], bool]


class MatcherSyntaxError(ValueError):
    pass


_TOKEN = re.compile(
    r"""\s*(?:
    (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<regex>/(?:[^/\\]|\\.)*/i?)
  | (?P<path>@(?:\.[A-Za-z_][\w\-]*|\[\*\]|\[\d+\])*)
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<op>==|!=|=~|&&|\|\||\bin\b|\(|\))
  | (?P<word>true|false|null)
)""",
    re.X,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise MatcherSyntaxError(f"unexpected text at {text[pos : pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _values(obj: Any, path: str) -> list[Any]:
    """Every value ``path`` (``@.a[*].b``) reaches in ``obj``."""
    current = [obj]
    for part in re.findall(r"\.[A-Za-z_][\w\-]*|\[\*\]|\[\d+\]", path):
        nxt: list[Any] = []
        for value in current:
            if part == "[*]":
                if isinstance(value, list):
                    nxt.extend(value)
            elif part.startswith("["):
                idx = int(part[1:-1])
                if isinstance(value, list) and idx < len(value):
                    nxt.append(value[idx])
            elif isinstance(value, dict) and part[1:] in value:
                nxt.append(value[part[1:]])
        current = nxt
    return current


def _literal(kind: str, text: str) -> Any:
    if kind == "str":
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    if kind == "num":
        return float(text)
    if kind == "word":
        return {"true": True, "false": False, "null": None}[text]
    raise MatcherSyntaxError(f"expected a value, got {text!r}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, float) and not isinstance(a, bool):
        try:
            return float(a) == b
        except (TypeError, ValueError):
            return False
    return a == b


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.toks = tokens
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise MatcherSyntaxError("unexpected end of matcher")
        self.i += 1
        return tok

    def parse(self) -> Matcher:
        fn = self.or_expr()
        if self.peek() is not None:
            raise MatcherSyntaxError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return fn

    def or_expr(self) -> Matcher:
        parts = [self.and_expr()]
        while self.peek() == ("op", "||"):
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else (lambda o: any(p(o) for p in parts))

    def and_expr(self) -> Matcher:
        parts = [self.clause()]
        while self.peek() == ("op", "&&"):
            self.take()
            parts.append(self.clause())
        return parts[0] if len(parts) == 1 else (lambda o: all(p(o) for p in parts))

    def clause(self) -> Matcher:
        kind, text = self.take()
        if (kind, text) == ("op", "("):
            inner = self.or_expr()
            if self.take() != ("op", ")"):
                raise MatcherSyntaxError("missing ')'")
            return inner
        if kind == "path":
            path = text
            nxt = self.peek()
            if nxt is None or nxt[0] != "op" or nxt[1] not in ("==", "!=", "=~"):
                return lambda o: any(v not in (None, False, "", [], {}) for v in _values(o, path))
            op = self.take()[1]
            vkind, vtext = self.take()
            if op == "=~":
                if vkind != "regex":
                    raise MatcherSyntaxError("=~ needs a /regex/")
                flags = re.I if vtext.endswith("i") else 0
                try:
                    rx = re.compile(vtext[1 : vtext.rindex("/")], flags)
                except re.error as exc:
                    raise MatcherSyntaxError(f"bad regex: {exc}") from exc
                return lambda o: any(isinstance(v, str) and rx.fullmatch(v) for v in _values(o, path))
            value = _literal(vkind, vtext)
            if op == "==":
                return lambda o: any(_same(v, value) for v in _values(o, path))
            return lambda o: not any(_same(v, value) for v in _values(o, path))
        if kind in ("str", "num", "word"):
            value = _literal(kind, text)
            if self.take() != ("op", "in"):
                raise MatcherSyntaxError("expected 'in' after a value")
            pkind, ptext = self.take()
            if pkind != "path":
                raise MatcherSyntaxError("expected a @.path after 'in'")
            return lambda o: any(_same(v, value) for v in _values(o, ptext))
        raise MatcherSyntaxError(f"unexpected {text!r}")


def compile_matcher(text: str) -> Matcher:
    """Compile a matcher; raises :class:`MatcherSyntaxError` with a reason."""
    tokens = _tokens(text)
    if not tokens:
        raise MatcherSyntaxError("empty matcher")
    return _Parser(tokens).parse()


def matches(text: str | None, obj: dict[str, Any]) -> bool:
    """True when there is no matcher or ``obj`` meets it."""
    if not text:
        return True
    return compile_matcher(text)(obj)
