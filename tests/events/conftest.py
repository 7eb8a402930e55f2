"""Fixtures for Event Service tests: users and projects, and the recording action provider registered."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from events_helpers import RECORDING, RecordingProvider, add_project, add_user

from flip_imaging.context import AppContext
from flip_imaging.events.actions import register_action_provider, unregister_action_provider


@pytest.fixture
def recorder() -> Iterator[RecordingProvider]:
    provider = RecordingProvider()
    register_action_provider(provider)
    yield provider
    unregister_action_provider(RECORDING)


@pytest.fixture
def world(ctx: AppContext) -> AppContext:
    """P1 (owner ``owner``, member ``member``, collaborator ``collab``) and P2 (owner ``other``)."""
    for name in ("owner", "member", "collab", "other"):
        add_user(ctx, name)
    add_project(ctx, "P1", {"owner": "owner", "member": "member", "collab": "collaborator"})
    add_project(ctx, "P2", {"other": "owner"})
    return ctx


