"""Every route × every role gets exactly what XNAT would allow (table: ``permission_table.py``).

``test_every_route_is_in_the_table`` fails, with the list, when a route has no entry (or an entry no
longer matches a route), so new routes cannot slip past the matrix. ``test_matrix`` then calls each
route as anonymous, an outsider, a collaborator, a member, an owner and the site admin.
"""

from __future__ import annotations

import types
from typing import Any

import pytest
from auth_helpers import PASSWORD
from fastapi.testclient import TestClient
from permission_table import CASES, OK, ROLE_USERS, ROLES, SAMPLE, Case, seed

from flip_imaging.app import create_app

SKIPPED_METHODS = {"HEAD", "OPTIONS"}


def registered_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves, through included routers."""
    try:  # FastAPI ≥ 0.120 keeps included routers nested
        from fastapi.routing import iter_route_contexts

        routes: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:  # older FastAPI: flat list
        routes = list(app.routes)
    low_priority = getattr(app.router, "_iter_low_priority_routes", None)
    if low_priority is not None:  # e.g. router.frontend(...) static front-ends
        routes.extend(low_priority())
    found: set[tuple[str, str]] = set()
    for route in routes:
        path = getattr(route, "path", None) or type(route).__name__
        methods = getattr(route, "methods", None)
        if methods is None:
            found.add(("MOUNT" if hasattr(route, "app") else "ANY", path))
            continue
        for method in methods:
            if method in SKIPPED_METHODS and "GET" in methods:
                continue
            found.add((method, path))
    return found


def test_every_route_is_in_the_table() -> None:
    app = create_app(types.SimpleNamespace(), start_services=False)  # type: ignore[arg-type]
    routes = registered_routes(app)
    keys = [case.key for case in CASES]
    idents = [case.ident for case in CASES]
    duplicates = sorted({i for i in idents if idents.count(i) > 1})
    missing = sorted(routes - set(keys))
    stale = sorted(set(keys) - routes)
    problems = []
    if missing:
        problems.append("routes missing from tests/auth/permission_table.py CASES:\n  "
                        + "\n  ".join(f"{m} {p}" for m, p in missing))
    if stale:
        problems.append("CASES entries matching no route:\n  " + "\n  ".join(f"{m} {p}" for m, p in stale))
    if duplicates:
        problems.append(f"duplicate CASES entries: {duplicates}")
    assert not problems, "\n".join(problems)


def _fill(value: Any, sample: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**sample) if "{" in value else value
    if isinstance(value, dict):
        return {k: _fill(v, sample) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, sample) for v in value]
    return value


class World:
    """One copy of the seeded archive with a client; a login session per role comes with the seed."""

    def __init__(self, world_factory: Any) -> None:
        ctx, snapshot = world_factory(seed, PASSWORD, ROLE_USERS)
        self.sample = {**SAMPLE, **snapshot.sample}
        self.sessions = snapshot.sessions
        self.client = TestClient(create_app(ctx, start_services=False))
        self.client.__enter__()

    def call(self, case: Case, role: str) -> int:
        self.client.cookies.clear()  # nothing carries over between roles (logins set cookies)
        headers = dict(case.headers or {})
        if role in self.sessions:
            headers["Cookie"] = f"JSESSIONID={self.sessions[role]}"
        kwargs: dict[str, Any] = {"headers": headers, "params": _fill(case.params, self.sample)}
        if case.json is not None:
            kwargs["json"] = _fill(case.json, self.sample)
        elif case.data is not None:
            kwargs["data"] = _fill(case.data, self.sample)
        elif case.content is not None:
            kwargs["content"] = case.content
        return self.client.request(case.method, case.concrete_url(self.sample), **kwargs).status_code

    def close(self) -> None:
        self.client.__exit__(None, None, None)


def _matches(expected: Any, status: int, case: Case) -> bool:
    if status >= 500:
        return False
    if expected == OK:
        return 200 <= status < 400 or status in case.ok
    return status == expected


@pytest.mark.parametrize("case", CASES, ids=[c.ident for c in CASES])
def test_matrix(case: Case, world_factory) -> None:
    # GETs share one world. A mutating call gets a fresh world for every role expected to succeed, so
    # that one role's change never decides the next role's answer; roles expected to get an error
    # (refused, 405, 404...) share one world: a call that fails must not change anything.
    mutating = case.method not in ("GET", "HEAD")
    shared: World | None = None
    got: dict[str, int] = {}
    worlds: list[World] = []
    try:
        for i, role in enumerate(ROLES):
            refused = case.expect[i] != OK
            if shared is None or (mutating and not refused):
                world = World(world_factory)
                worlds.append(world)
                if not mutating or refused:
                    shared = world
            else:
                world = shared
            got[role] = world.call(case, role)
    finally:
        for world in worlds:
            world.close()
    wrong = {role: (case.expect[i], got[role]) for i, role in enumerate(ROLES)
             if not _matches(case.expect[i], got[role], case)}
    assert not wrong, f"{case.ident}: role → (expected, got): {wrong}"
