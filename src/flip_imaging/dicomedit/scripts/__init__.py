"""Bundled DicomEdit 6 scripts: FLIP's site de-identification script and XNAT's default, as text."""

from __future__ import annotations

import re
from importlib import resources

_SECRET_LINE = re.compile(r'^dateShiftSecret := "[^"\n]*"$', re.MULTILINE)
_SECRET_OK = re.compile(r"[A-Za-z0-9_.:-]{16,128}")
#: the date-shift secret shipped in flip_site.das; a server replaces it with its own when it applies
#: a script (see :func:`with_site_secret`)
PLACEHOLDER_SECRET = "flip-default-secret-change-me"
_PLACEHOLDER_LINE = re.compile(rf'^dateShiftSecret := "{re.escape(PLACEHOLDER_SECRET)}"[ \t]*$', re.MULTILINE)


def check_secret(secret: str) -> str:
    """``secret`` if it can be a date-shift secret (it is pasted into a DicomEdit string literal),
    else ValueError."""
    if not _SECRET_OK.fullmatch(secret):
        raise ValueError("date-shift secret must be 16-128 characters of [A-Za-z0-9_.:-]")
    return secret


def with_site_secret(text: str, secret: str) -> str:
    """``text`` with each ``dateShiftSecret := "<placeholder>"`` line assigning ``secret`` instead.

    A server keeps its secret out of the script text that users can read (``GET
    /xapi/anonymize/site``) and supplies it only when applying the script. A script that assigns a
    secret of its own, or none, is returned unchanged.
    """
    return _PLACEHOLDER_LINE.sub(f'dateShiftSecret := "{check_secret(secret)}"', text)


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def flip_site_script(secret: str | None = None) -> str:
    """FLIP's site script (PS3.15 Annex E basic profile + options), see the comments in the file.

    ``secret`` replaces the built-in date-shift secret, so a subject's shift cannot be recomputed from
    its label by someone who only has the published script. It must be 16-128 characters of
    ``[A-Za-z0-9_.:-]`` (it is pasted into a DicomEdit string literal).
    """
    text = _read("flip_site.das")
    if secret is None:
        return text
    text, count = _SECRET_LINE.subn(f'dateShiftSecret := "{check_secret(secret)}"', text)
    if count != 1:
        raise RuntimeError("flip_site.das has no single dateShiftSecret line")
    return text


def xnat_default_script() -> str:
    """XNAT's default site-wide anonymization script (relabel only; removes no other PHI)."""
    return _read("xnat_default.das")


__all__ = [
    "PLACEHOLDER_SECRET",
    "check_secret",
    "flip_site_script",
    "with_site_secret",
    "xnat_default_script",
]
