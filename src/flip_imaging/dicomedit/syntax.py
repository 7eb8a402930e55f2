"""Lexer and parser for the DicomEdit 6 language, producing a small AST.

Written from the DicomEdit 6.x language reference: statements are separated by newlines, `//`
comments run to the end of the line, a backslash at the end of a line continues it, tags are
`(gggg,eeee)` (even groups) or `(gggg,{Creator}ee)` (odd groups), and `x`/`X` are hex wildcards
so they can never be names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import DicomEditSyntaxError
from .tagpath import Step, TagPath, TagPattern, make_pattern

SUPPORTED_VERSIONS = {"6.0", "6.1", "6.2", "6.3", "6.4", "6.5", "6.6"}

KEYWORDS = {
    "version", "describe", "export", "hidden", "const", "immutable", "echo",
    "removeAllPrivateTags", "if", "elseif", "else",
}

# ---- tokens -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Token:
    kind: str
    value: object
    line: int
    col: int


_HEX = "[0-9a-fA-FxX@#]"
_TAG_RE = re.compile(
    rf"\(({_HEX}{{4}})[ \t]*,[ \t]*(?:({_HEX}{{4}})|\{{([^}}\n]*)\}}({_HEX}{{2}}))\)"
)
_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
_DIGITS = frozenset("0123456789")
_WORD_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_WORD = _WORD_START | _DIGITS
_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CREATOR_RE = re.compile(r"[A-Za-z][A-Za-z0-9 \-_.:]*")
_PUNCT = [
    (":=", "ASSIGN"), ("?=", "ASSIGN_IF"), ("!=", "NE"), ("!~", "NMATCH"), ("=", "EQ"), ("~", "MATCH"),
    ("?", "QUESTION"), (":", "COLON"), ("[", "LBRACK"), ("]", "RBRACK"), ("(", "LPAREN"), (")", "RPAREN"),
    ("{", "LBRACE"), ("}", "RBRACE"), (",", "COMMA"), ("/", "SLASH"), ("-", "MINUS"), ("%", "PERCENT"),
    ("*", "STAR"), ("+", "PLUS"), (".", "DOT"),
]


def _even(ch: str) -> bool | None:
    if ch in "xX":
        return None
    if ch == "@":
        return True
    if ch == "#":
        return False
    return int(ch, 16) % 2 == 0


def tokenize(text: str) -> list[Token]:
    """Split script text into tokens; raises DicomEditSyntaxError with line and column."""
    toks: list[Token] = []
    i, n, line, line_start = 0, len(text), 1, 0
    while i < n:
        ch = text[i]
        col = i - line_start + 1
        if ch in " \t\f\ufeff":
            i += 1
            continue
        if ch == "\\":  # line continuation
            j = i + 1
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] in "\r\n":
                j += 2 if text.startswith("\r\n", j) else 1
                line += 1
                line_start = j
                i = j
                continue
            raise DicomEditSyntaxError("unexpected '\\' (only allowed at the end of a line)", line, col)
        if ch in "\r\n":
            j = i + (2 if text.startswith("\r\n", i) else 1)
            toks.append(Token("NEWLINE", None, line, col))
            line += 1
            line_start = j
            i = j
            continue
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            if i > 0 and text[i - 1] == "\r":
                i -= 1
            continue
        if ch == '"':
            j = i + 1
            buf: list[str] = []
            while True:
                if j >= n or text[j] in "\r\n":
                    raise DicomEditSyntaxError("unterminated string", line, col)
                c = text[j]
                if c == '"':
                    break
                if c == "\\":
                    if j + 1 >= n or text[j + 1] in "\r\n":
                        raise DicomEditSyntaxError("unterminated string", line, col)
                    nxt = text[j + 1]
                    # \\ and \" are escapes; any other backslash pair is kept as written
                    # (so regex escapes like "\d" survive, as the real engine keeps them).
                    buf.append(nxt if nxt in '\\"' else c + nxt)
                    j += 2
                    continue
                buf.append(c)
                j += 1
            toks.append(Token("STRING", "".join(buf), line, col))
            i = j + 1
            continue
        if ch == "(":
            m = _TAG_RE.match(text, i)
            if m:
                toks.append(_tag_token(m, line, col))
                i = m.end()
                continue
            if re.match(rf"\({_HEX}{{4}}[ \t]*,", text[i:i + 12]):
                raise DicomEditSyntaxError("malformed tag", line, col)
        if ch in _DIGITS or (ch == "-" and i + 1 < n and text[i + 1] in _DIGITS):
            m = _NUMBER_RE.match(text, i)
            if m and not (m.end() < n and text[m.end()] in _WORD):
                toks.append(Token("NUMBER", m.group(0), line, col))
                i = m.end()
                continue
            if ch != "-":
                raise DicomEditSyntaxError("malformed number", line, col)
        if ch in _WORD_START:
            m = _ID_RE.match(text, i)
            assert m is not None
            word = m.group(0)
            if word in ("x", "X"):
                msg = f"'{word}' is a hex wildcard and cannot be used as a name"
                raise DicomEditSyntaxError(msg, line, col)
            toks.append(Token("KW" if word in KEYWORDS else "ID", word, line, col))
            i = m.end()
            continue
        for sym, kind in _PUNCT:
            if text.startswith(sym, i):
                toks.append(Token(kind, sym, line, col))
                i += len(sym)
                break
        else:
            raise DicomEditSyntaxError(f"unexpected character {ch!r}", line, col)
    toks.append(Token("EOF", None, line, i - line_start + 1))
    return toks


def _tag_token(m: re.Match[str], line: int, col: int) -> Token:
    group, pub_elem, creator, pvt_elem = m.group(1), m.group(2), m.group(3), m.group(4)
    parity = _even(group[3])
    if parity is None:
        raise DicomEditSyntaxError("the last digit of a tag group must not be a wildcard", line, col)
    if parity:
        if pub_elem is None:
            raise DicomEditSyntaxError(f"even group {group} cannot have a private creator", line, col)
        return Token("TAG", make_pattern(group, pub_elem, None), line, col)
    if pub_elem is not None:
        raise DicomEditSyntaxError(
            f"private tag ({group},{pub_elem}) must be written ({group},{{Creator}}ee)", line, col
        )
    assert creator is not None
    if not _CREATOR_RE.fullmatch(creator):
        raise DicomEditSyntaxError(f"invalid private creator {{{creator}}}", line, col)
    return Token("TAG", make_pattern(group, pvt_elem, creator), line, col)


# ---- AST --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Node:
    line: int
    col: int


@dataclass(slots=True)
class Literal(Node):
    value: str


@dataclass(slots=True)
class NumberLit(Node):
    value: str


@dataclass(slots=True)
class Var(Node):
    name: str


@dataclass(slots=True)
class PathRef(Node):
    path: TagPath


@dataclass(slots=True)
class Call(Node):
    name: str
    args: list[Node]


@dataclass(slots=True)
class Condition(Node):
    left: Node
    op: str | None  # None: the left value itself is the boolean
    right: Node | None
    regex: re.Pattern[str] | None = None  # precompiled when the right side is a literal


@dataclass(slots=True)
class Assign(Node):
    path: TagPath
    value: Node
    only_if_present: bool


@dataclass(slots=True)
class SetVar(Node):
    name: str
    value: Node


@dataclass(slots=True)
class Delete(Node):
    path: TagPath


@dataclass(slots=True)
class Echo(Node):
    value: Node | None


@dataclass(slots=True)
class CallStmt(Node):
    call: Call


@dataclass(slots=True)
class RemoveAllPrivate(Node):
    pass


@dataclass(slots=True)
class Ternary(Node):
    cond: Condition
    then: Node
    otherwise: Node | None


@dataclass(slots=True)
class IfBlock(Node):
    branches: list[tuple[Condition, list[Node]]]
    otherwise: list[Node] | None


@dataclass(slots=True)
class Describe(Node):
    name: str
    label: str | None
    flag: str | None


@dataclass(slots=True)
class Export(Node):
    name: str
    field: str


@dataclass(slots=True)
class Program:
    version: str
    statements: list[Node] = field(default_factory=list)
    descriptions: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    exports: dict[str, str] = field(default_factory=dict)


# ---- parser -----------------------------------------------------------------------------------------

COND_OPS = {"EQ": "=", "NE": "!=", "MATCH": "~", "NMATCH": "!~"}


def compile_regex(pattern: str, line: int = 0, col: int = 0) -> re.Pattern[str]:
    """Compile a Java-style regex for whole-string matching, as a syntax error if invalid."""
    try:
        return re.compile(java_regex(pattern), re.DOTALL if "(?s)" in pattern else 0)
    except re.error as e:
        raise DicomEditSyntaxError(f"invalid regular expression: {e}", line, col) from None


_JAVA_CLASSES = {
    r"\p{ASCII}": r"\x00-\x7F", r"\p{Alpha}": "A-Za-z", r"\p{Digit}": "0-9", r"\p{Alnum}": "A-Za-z0-9",
    r"\p{Upper}": "A-Z", r"\p{Lower}": "a-z", r"\p{Punct}": r"!-/:-@\[-`{-~", r"\p{Space}": r" \t\n\x0B\f\r",
}


def java_regex(pattern: str) -> str:
    """Translate the few Java regex spellings Python lacks (POSIX classes)."""
    if "\\p{" not in pattern and "\\P{" not in pattern:
        return pattern
    for k, v in _JAVA_CLASSES.items():
        pattern = pattern.replace(k, f"[{v}]").replace(k.replace("p{", "P{"), f"[^{v}]")
    return pattern


class Parser:
    """Recursive-descent parser over the token list."""

    def __init__(self, toks: list[Token], known_functions: frozenset[str]) -> None:
        self.toks = toks
        self.pos = 0
        self.functions = known_functions

    # helpers
    def peek(self, k: int = 0) -> Token:
        return self.toks[min(self.pos + k, len(self.toks) - 1)]

    def next(self) -> Token:
        tok = self.toks[self.pos]
        if tok.kind != "EOF":
            self.pos += 1
        return tok

    def error(self, msg: str, tok: Token | None = None) -> DicomEditSyntaxError:
        tok = tok or self.peek()
        return DicomEditSyntaxError(msg, tok.line, tok.col)

    def expect(self, kind: str, what: str) -> Token:
        tok = self.peek()
        if tok.kind != kind:
            raise self.error(f"expected {what}, found {_describe(tok)}")
        return self.next()

    def at_kw(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "KW" and tok.value == word

    def skip_newlines(self) -> None:
        while self.peek().kind == "NEWLINE":
            self.next()

    def end_of_statement(self) -> None:
        tok = self.peek()
        if tok.kind not in ("NEWLINE", "EOF", "RBRACE"):
            raise self.error(f"unexpected {_describe(tok)} after statement")

    # script
    def parse_script(self) -> Program:
        self.skip_newlines()
        if not self.at_kw("version"):
            raise self.error('script must start with a version line, e.g. version "6.6"')
        vtok = self.next()
        stok = self.expect("STRING", "version string")
        version = str(stok.value).strip()
        if version not in SUPPORTED_VERSIONS:
            msg = f"unsupported DicomEdit version {version!r} (6.0-6.6)"
            raise DicomEditSyntaxError(msg, vtok.line, vtok.col)
        prog = Program(version)
        self.end_of_statement()
        prog.statements = self.parse_block_body(prog, top=True)
        if self.peek().kind != "EOF":
            raise self.error(f"unexpected {_describe(self.peek())}")
        return prog

    def parse_block_body(self, prog: Program, top: bool) -> list[Node]:
        stmts: list[Node] = []
        while True:
            self.skip_newlines()
            tok = self.peek()
            if tok.kind == "EOF":
                if not top:
                    raise self.error("missing '}'")
                return stmts
            if tok.kind == "RBRACE":
                if top:
                    raise self.error("unbalanced '}'")
                return stmts
            stmts.append(self.parse_statement(prog))
            self.end_of_statement()

    def parse_statement(self, prog: Program) -> Node:
        tok = self.peek()
        if tok.kind == "KW":
            word = tok.value
            if word == "version":
                raise self.error("version may only appear once, as the first statement")
            if word == "describe":
                self.next()
                name = self.expect("ID", "variable name").value
                nt = self.peek()
                if nt.kind == "STRING":
                    self.next()
                    prog.descriptions[str(name)] = (str(nt.value), None)
                    return Describe(tok.line, tok.col, str(name), str(nt.value), None)
                if nt.kind == "KW" and nt.value in ("hidden", "const", "immutable"):
                    self.next()
                    prog.descriptions[str(name)] = (None, str(nt.value))
                    return Describe(tok.line, tok.col, str(name), None, str(nt.value))
                raise self.error("expected a description string or hidden/const/immutable")
            if word == "export":
                self.next()
                name = self.expect("ID", "variable name").value
                fld = self.expect("STRING", "export field string").value
                prog.exports[str(name)] = str(fld)
                return Export(tok.line, tok.col, str(name), str(fld))
            if word == "if":
                return self.parse_if(prog)
        return self.parse_action(allow_condition=True)

    def parse_if(self, prog: Program) -> Node:
        start = self.next()
        branches: list[tuple[Condition, list[Node]]] = []
        cond = self.parse_if_condition()
        branches.append((cond, self.parse_braced(prog)))
        otherwise: list[Node] | None = None
        while True:
            save = self.pos
            self.skip_newlines()
            if self.at_kw("elseif"):
                self.next()
                cond = self.parse_if_condition()
                branches.append((cond, self.parse_braced(prog)))
                continue
            if self.at_kw("else"):
                self.next()
                if self.at_kw("if"):
                    self.next()
                    cond = self.parse_if_condition()
                    branches.append((cond, self.parse_braced(prog)))
                    continue
                otherwise = self.parse_braced(prog)
            else:
                self.pos = save
            break
        return IfBlock(start.line, start.col, branches, otherwise)

    def parse_if_condition(self) -> Condition:
        if self.peek().kind == "LPAREN":
            self.next()
            cond = self.parse_condition()
            self.expect("RPAREN", "')'")
            return cond
        return self.parse_condition()

    def parse_braced(self, prog: Program) -> list[Node]:
        self.skip_newlines()
        self.expect("LBRACE", "'{'")
        body = self.parse_block_body(prog, top=False)
        self.expect("RBRACE", "'}'")
        return body

    def parse_condition(self) -> Condition:
        tok = self.peek()
        left = self.parse_value()
        op_tok = self.peek()
        if op_tok.kind in COND_OPS:
            self.next()
            right = self.parse_value()
            cond = Condition(tok.line, tok.col, left, COND_OPS[op_tok.kind], right)
            if cond.op in ("~", "!~") and isinstance(right, Literal):
                cond.regex = compile_regex(right.value, right.line, right.col)
            return cond
        return Condition(tok.line, tok.col, left, None, None)

    def parse_action(self, allow_condition: bool) -> Node:
        """An action, or (when allowed) `condition ? action [: action]`."""
        tok = self.peek()
        if tok.kind == "MINUS":
            self.next()
            return Delete(tok.line, tok.col, self.parse_tagpath())
        if tok.kind == "KW":
            if tok.value == "echo":
                self.next()
                if self.peek().kind in ("NEWLINE", "EOF", "RBRACE", "COLON"):
                    return Echo(tok.line, tok.col, None)
                return Echo(tok.line, tok.col, self.parse_value())
            if tok.value == "removeAllPrivateTags":
                self.next()
                if self.peek().kind == "LBRACK":
                    self.next()
                    self.expect("RBRACK", "']'")
                return RemoveAllPrivate(tok.line, tok.col)
            raise self.error(f"unexpected keyword '{tok.value}'")
        if tok.kind == "ID" and self.peek(1).kind == "ASSIGN":
            self.next()
            self.next()
            return SetVar(tok.line, tok.col, str(tok.value), self.parse_value())
        if tok.kind in ("TAG", "STAR", "PLUS", "DOT"):
            save = self.pos
            path = self.parse_tagpath()
            nt = self.peek()
            if nt.kind in ("ASSIGN", "ASSIGN_IF"):
                self.next()
                return Assign(tok.line, tok.col, path, self.parse_value(), nt.kind == "ASSIGN_IF")
            self.pos = save
        if not allow_condition:
            value = self.parse_value()
            if isinstance(value, Call):
                return CallStmt(tok.line, tok.col, value)
            raise self.error("expected an action", tok)
        cond = self.parse_condition()
        if self.peek().kind == "QUESTION":
            self.next()
            then = self.parse_action(allow_condition=False)
            otherwise = None
            if self.peek().kind == "COLON":
                self.next()
                otherwise = self.parse_action(allow_condition=False)
            return Ternary(tok.line, tok.col, cond, then, otherwise)
        if cond.op is None and isinstance(cond.left, Call):
            return CallStmt(tok.line, tok.col, cond.left)
        raise self.error("expected a statement", tok)

    def parse_value(self) -> Node:
        tok = self.peek()
        if tok.kind == "STRING":
            self.next()
            return Literal(tok.line, tok.col, str(tok.value))
        if tok.kind == "NUMBER":
            self.next()
            return NumberLit(tok.line, tok.col, str(tok.value))
        if tok.kind in ("TAG", "STAR", "PLUS", "DOT"):
            return PathRef(tok.line, tok.col, self.parse_tagpath())
        if tok.kind == "ID":
            self.next()
            if self.peek().kind == "LBRACK":
                return self.parse_call(tok)
            return Var(tok.line, tok.col, str(tok.value))
        if tok.kind == "KW" and tok.value == "removeAllPrivateTags" and self.peek(1).kind == "LBRACK":
            self.next()
            return self.parse_call(tok)
        raise self.error(f"expected a value, found {_describe(tok)}")

    def parse_call(self, name_tok: Token) -> Call:
        name = str(name_tok.value)
        if name not in self.functions:
            raise self.error(f"unknown function '{name}'", name_tok)
        self.expect("LBRACK", "'['")
        args: list[Node] = []
        if self.peek().kind != "RBRACK":
            args.append(self.parse_value())
            while self.peek().kind == "COMMA":
                self.next()
                args.append(self.parse_value())
        self.expect("RBRACK", "']' closing the argument list")
        return Call(name_tok.line, name_tok.col, name, args)

    def parse_tagpath(self) -> TagPath:
        steps: list[Step] = []
        parts: list[str] = []
        while True:
            tok = self.peek()
            if tok.kind == "TAG":
                self.next()
                pattern: TagPattern = tok.value  # type: ignore[assignment]
                item: int | str | None = None
                text = pattern.text
                if self.peek().kind == "LBRACK":
                    self.next()
                    it = self.peek()
                    if it.kind == "PERCENT":
                        self.next()
                        item = "%"
                    elif it.kind == "NUMBER" and str(it.value).isdigit():
                        self.next()
                        item = int(str(it.value))
                    else:
                        raise self.error("expected an item number or '%'")
                    self.expect("RBRACK", "']'")
                    text += f"[{item}]"
                steps.append(Step("tag", pattern, item))
                parts.append(text)
            elif tok.kind in ("STAR", "PLUS", "DOT"):
                self.next()
                steps.append(Step(str(tok.value)))
                parts.append(str(tok.value))
            else:
                raise self.error(f"expected a tag, found {_describe(tok)}")
            if self.peek().kind == "SLASH":
                self.next()
                continue
            break
        if steps[-1].kind != "tag":
            raise self.error("a tag path must end with a tag")
        return TagPath.build("/".join(parts), steps)


def _describe(tok: Token) -> str:
    if tok.kind == "EOF":
        return "end of script"
    if tok.kind == "NEWLINE":
        return "end of line"
    if tok.kind == "STRING":
        return "a string"
    if tok.kind == "TAG":
        return "a tag"
    return repr(str(tok.value))


def parse_program(text: str, known_functions: frozenset[str]) -> Program:
    return Parser(tokenize(text), known_functions).parse_script()


def parse_tagpath_text(text: str) -> TagPath:
    """Parse a tag path given as a string argument (e.g. to set[] or delete[])."""
    toks = tokenize(text)
    p = Parser(toks, frozenset())
    path = p.parse_tagpath()
    if p.peek().kind != "EOF":
        raise p.error("unexpected text after tag path")
    return path
