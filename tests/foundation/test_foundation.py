"""The foundation: migrations match the models on both backends, settings load, admin bootstrap."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

from flip_imaging.archive.ids import EXPERIMENT, SUBJECT, next_xnat_id
from flip_imaging.auth.bootstrap import PASSWORD_FILE, ensure_admin
from flip_imaging.auth.models import User
from flip_imaging.config import Settings
from flip_imaging.context import create_context
from flip_imaging.db import Base, import_all_models


def test_migrations_match_models(ctx) -> None:
    import_all_models()
    with ctx.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_xnat_ids_are_sequential_and_unique(ctx) -> None:
    with ctx.session() as db:
        ids = [next_xnat_id(db, SUBJECT) for _ in range(3)] + [next_xnat_id(db, EXPERIMENT)]
    assert ids == ["XNAT_S00001", "XNAT_S00002", "XNAT_S00003", "XNAT_E00001"]


def test_admin_password_generated_owner_only(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d")
    ctx = create_context(settings)
    try:
        boot = ensure_admin(ctx)
        assert boot.created and boot.password_file == settings.data_dir / PASSWORD_FILE
        mode = stat.S_IMODE(boot.password_file.stat().st_mode)
        assert mode == 0o600
        password = boot.password_file.read_text().strip()
        assert len(password) >= 20
        again = ensure_admin(ctx)
        assert not again.created
        with ctx.session() as db:
            admin = db.scalar(select(User).where(User.username == "admin"))
            assert admin is not None and password not in (admin.password_hash or "")
    finally:
        ctx.close()
    assert stat.S_IMODE(settings.spool_dir.stat().st_mode) == 0o700


def test_settings_env_and_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLIP_IMAGING_PORT", "9999")
    monkeypatch.setenv("FLIP_IMAGING_DATA_DIR", str(tmp_path))
    s = Settings.load()
    assert s.port == 9999 and s.data_dir == tmp_path
    assert s.effective_database_url.startswith("sqlite:///")
    assert Settings.load(port=1234).port == 1234
    with pytest.raises(ValueError, match="unknown setting"):
        Settings.load(bogus=1)


def test_anonymous_gets_plain_text_401(client) -> None:
    r = client.get("/xapi/users")
    assert r.status_code in (401, 404)
    assert not r.text.lstrip().lower().startswith(("<!doctype", "<html"))
