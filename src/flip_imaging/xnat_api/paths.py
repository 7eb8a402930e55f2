"""Parsing XNAT archive URLs (``/data[/archive]/projects/P/subjects/S/experiments/E/scans/1/...``).

XNAT addresses the same object by many paths (with or without ``/archive``, with or without the subject,
by ID or by label). The parser turns the path after ``/data[/archive]`` into a chain of
``(kind, key)`` steps plus an optional tail: a collection to list, ``files`` (with a path) or a
project setting such as ``prearchive_code``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: for each level, the collections below it and the kind of their members
CHILDREN: dict[str | None, dict[str, str]] = {
    None: {"projects": "project", "subjects": "subject", "experiments": "experiment"},
    "project": {"subjects": "subject", "experiments": "experiment", "resources": "resource"},
    "subject": {"experiments": "experiment", "resources": "resource"},
    "experiment": {
        "scans": "scan",
        "assessors": "assessor",
        "resources": "resource",
        "reconstructions": "reconstruction",
    },
    "scan": {"resources": "resource"},
    "assessor": {"resources": "resource"},
    "resource": {},
}
PROJECT_SETTINGS = {"prearchive_code", "quarantine_code", "current_arc", "accessibility"}


class BadPath(ValueError):
    """The URL names nothing XNAT would serve."""


@dataclass
class Parsed:
    chain: list[tuple[str, str]] = field(default_factory=list)
    #: None (the object at the end of the chain), a collection name, ``files`` or a project setting
    tail: str | None = None
    #: the file path after ``files/`` or the value after a project setting
    arg: str | None = None

    @property
    def last_kind(self) -> str | None:
        return self.chain[-1][0] if self.chain else None


def parse(segments: list[str]) -> Parsed:
    out = Parsed()
    i = 0
    while i < len(segments):
        name = segments[i]
        kind = out.last_kind
        if name == "files" and kind is not None:
            out.tail = "files"
            rest = "/".join(segments[i + 1 :])
            out.arg = rest or None
            return out
        if kind == "project" and name in PROJECT_SETTINGS:
            if len(segments) > i + 2:
                raise BadPath(f"unexpected path after {name}")
            out.tail = name
            out.arg = segments[i + 1] if len(segments) > i + 1 else None
            return out
        if (
            kind == "assessor"
            and name in ("out", "in")
            and i + 1 < len(segments)
            and segments[i + 1] == "resources"
        ):
            i += 1
            continue
        children = CHILDREN.get(kind, {})
        if name not in children:
            raise BadPath(f"unknown path element {name!r}")
        if i + 1 == len(segments):
            out.tail = name
            return out
        key = segments[i + 1]
        if not key:
            raise BadPath("empty identifier in path")
        out.chain.append((children[name], key))
        i += 2
    return out
