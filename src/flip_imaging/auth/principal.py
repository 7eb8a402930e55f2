"""Who is calling, and what they may do in a project (XNAT's Owners/Members/Collaborators model)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from flip_imaging.archive.models import Project, ProjectMember
from flip_imaging.auth.models import User, UserRole

ADMIN_ROLE = "Administrator"


class Access(IntEnum):
    """What an action needs in a project; each project role grants up to one level."""

    NONE = 0
    READ = 1  # Collaborators: see and download
    WRITE = 2  # Members: also create and edit data
    DELETE = 3  # Owners: also delete data
    MANAGE = 4  # Owners: also manage members, scripts, subscriptions, project settings


ROLE_ACCESS = {"collaborator": Access.READ, "member": Access.WRITE, "owner": Access.MANAGE}


@dataclass(frozen=True)
class Principal:
    """An authenticated user (``user`` is None only for the anonymous guest)."""

    user: User | None
    is_admin: bool = False

    @property
    def username(self) -> str:
        return self.user.username if self.user else "guest"

    @property
    def authenticated(self) -> bool:
        return self.user is not None


ANONYMOUS = Principal(user=None)


def load_principal(session: Session, user: User) -> Principal:
    roles = set(session.scalars(select(UserRole.role).where(UserRole.user_pk == user.pk)))
    return Principal(user=user, is_admin=ADMIN_ROLE in roles)


def project_role(session: Session, principal: Principal, project: Project) -> str | None:
    """The caller's group in the project (``owner``/``member``/``collaborator``) or None."""
    if principal.user is None:
        return None
    return session.scalar(
        select(ProjectMember.role).where(ProjectMember.project_pk == project.pk,
                                         ProjectMember.user_pk == principal.user.pk)
    )


def project_access(session: Session, principal: Principal, project: Project) -> Access:
    """Admins may do everything; members per their group; public projects are readable by any user."""
    if principal.is_admin:
        return Access.MANAGE
    role = project_role(session, principal, project)
    if role is not None:
        return ROLE_ACCESS[role]
    if principal.authenticated and project.accessibility == "public":
        return Access.READ
    return Access.NONE


def can_see_project(session: Session, principal: Principal, project: Project) -> bool:
    """Whether the project shows up in listings (protected projects list but do not open)."""
    if project_access(session, principal, project) >= Access.READ:
        return True
    return principal.authenticated and project.accessibility == "protected"
