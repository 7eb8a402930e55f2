"""E-mails to users: a one-time set-password link for new accounts, a notice for added users.

Passwords are never e-mailed. The link holds a single-use alias token that expires; it only works from
inside the trust network because the archive is only reachable there. Sent with :mod:`smtplib` to
``settings.smtp_host``/``smtp_port`` (a relay inside the trust).
"""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from sqlalchemy.orm import Session

from flip_imaging.auth import service
from flip_imaging.auth.models import User
from flip_imaging.config import Settings

log = logging.getLogger(__name__)


class MailError(Exception):
    """The message could not be handed to the SMTP server."""


@dataclass(frozen=True)
class Letter:
    to: str
    subject: str
    body: str


def set_password_letter(*, to: str, username: str, link: str, expires: datetime, trust_name: str,
                        project_name: str | None = None) -> Letter:
    project_line = f" for the project \"{project_name}\"" if project_name else ""
    body = (
        f"Hello,\n\n"
        f"An imaging archive account has been created for you at {trust_name}{project_line}.\n\n"
        f"Username: {username}\n\n"
        f"Choose your password with this link:\n{link}\n\n"
        f"The link works once, only from inside the {trust_name} network, and expires on "
        f"{expires:%Y-%m-%d %H:%M} UTC. Nobody will ever send you your password by e-mail.\n"
    )
    return Letter(to=to, subject=f"[{trust_name}] Your imaging archive account", body=body)


def added_to_project_letter(*, to: str, username: str, trust_name: str, project_name: str,
                            site_url: str) -> Letter:
    body = (
        f"Hello {username},\n\n"
        f"You have been added to the project \"{project_name}\" in the imaging archive at {trust_name}.\n"
        f"Log in with your existing username ({username}) at {site_url} from inside the {trust_name} "
        f"network.\n"
    )
    return Letter(to=to, subject=f"[{trust_name}] Added to project {project_name}", body=body)


def send(settings: Settings, letter: Letter, *, timeout: float = 30.0) -> str:
    """Hand one message to the SMTP server; returns its Message-ID. Raises :class:`MailError`."""
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = letter.to
    msg["Subject"] = letter.subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=settings.mail_from.rpartition("@")[2] or None)
    msg.set_content(letter.body)
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout) as smtp:
            smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        # the address is the user's, not a patient's: fine to log which delivery failed
        log.warning("mail to %s failed: %s", letter.to, exc)
        raise MailError(f"could not send mail via {settings.smtp_host}:{settings.smtp_port}: {exc}") from exc
    return str(msg["Message-ID"])


def send_set_password_link(settings: Settings, db: Session, user: User, *, trust_name: str,
                           project_name: str | None = None) -> str:
    """Issue a single-use set-password link for ``user`` (in the caller's transaction) and e-mail it.

    Raises :class:`MailError` (the caller should roll back so that no unsent link stays valid) or
    ``service.Invalid`` when the user has no e-mail address or is disabled.
    """
    if not user.email:
        raise service.Invalid(f"User {user.username} has no e-mail address")
    expires = service.now() + service.TOKEN_LIFETIME
    _alias, _secret, url = service.set_password_link(db, user, settings.effective_site_url)
    letter = set_password_letter(to=user.email, username=user.username, link=url, expires=expires,
                                 trust_name=trust_name, project_name=project_name)
    return send(settings, letter)
