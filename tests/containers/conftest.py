"""Fixtures for Container Service tests: users, projects and worker pools on the real database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from containers_helpers import add_project, add_user

import flip_imaging.containers.provider  # noqa: F401  (registers the action provider)
from flip_imaging.containers.worker import ContainerWorkers
from flip_imaging.context import AppContext


@pytest.fixture
def world(ctx: AppContext) -> AppContext:
    """P1 (owner ``owner``, member ``member``, collaborator ``collab``) and P2 (owner ``other``)."""
    for name in ("owner", "member", "collab", "other"):
        add_user(ctx, name)
    add_project(ctx, "P1", {"owner": "owner", "member": "member", "collab": "collaborator"})
    add_project(ctx, "P2", {"other": "owner"})
    return ctx


@pytest.fixture
def workers(world: AppContext) -> Iterator[ContainerWorkers]:
    """A running worker pool of two threads in this process."""
    pool = ContainerWorkers(world, workers=2, lease_seconds=6, poll_seconds=0.2)
    pool.start()
    yield pool
    pool.stop()
