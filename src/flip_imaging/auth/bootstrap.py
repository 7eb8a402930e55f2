"""First-start set-up of the site administrator ``admin`` (as XNAT), never with a fixed password."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from flip_imaging.auth.models import User, UserRole
from flip_imaging.auth.passwords import hash_password, new_secret
from flip_imaging.auth.principal import ADMIN_ROLE
from flip_imaging.context import AppContext

ADMIN_USERNAME = "admin"
PASSWORD_FILE = "admin-password.txt"


@dataclass
class AdminBootstrap:
    created: bool
    #: where a generated password was written (None when it came from the environment or existed)
    password_file: Path | None


def ensure_admin(ctx: AppContext) -> AdminBootstrap:
    """Create ``admin`` if missing: password from settings, else generated into an owner-only file."""
    with ctx.session() as db:
        if db.scalar(select(User).where(User.username == ADMIN_USERNAME)) is not None:
            return AdminBootstrap(created=False, password_file=None)
        password = ctx.settings.admin_password
        password_file: Path | None = None
        if not password:
            password = new_secret(18)
            password_file = ctx.settings.data_dir / PASSWORD_FILE
            fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(password + "\n")
        user = User(username=ADMIN_USERNAME, password_hash=hash_password(password), first_name="Site",
                    last_name="Administrator", email="admin@localhost", enabled=True, verified=True)
        db.add(user)
        db.flush()
        db.add(UserRole(user_pk=user.pk, role=ADMIN_ROLE))
    return AdminBootstrap(created=True, password_file=password_file)
