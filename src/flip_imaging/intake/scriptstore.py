"""Site-wide and per-project DicomEdit scripts: storage, validation, and application to a dataset.

Scripts live in site preferences. Each stored script has an integer id (bumped on every change) that
goes into the De-identification Method Code Sequence item appended each time a script is applied, as
XNAT records it. A new installation's site script is FLIP's de-identification script, enabled.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy.orm import Session

from flip_imaging.config import Settings
from flip_imaging.dicomedit import ApplyResult, DicomEditSyntaxError, Script
from flip_imaging.dicomedit.scripts import check_secret
from flip_imaging.prefs import get_pref, set_pref

SITE_KEY = "anonymize.site"
PROJECT_KEY = "anonymize.project.{}"
SCRIPT_ID_COUNTER = "anonymize.next_id"
DEID_METHOD_CODE_SEQUENCE = 0x00120064
CODE_MEANING = "XNAT DicomEdit 6 Script"


class ScriptInvalid(ValueError):
    """A script that does not parse; the message is the parser's."""


@dataclass(frozen=True)
class StoredScript:
    """A script as stored: its id (for the code sequence), its text and whether it is enabled."""

    script_id: int
    text: str
    enabled: bool


def default_script_text() -> str:
    from flip_imaging.dicomedit.scripts import xnat_default_script

    return xnat_default_script()


def flip_script_text() -> str:
    from flip_imaging.dicomedit.scripts import flip_site_script

    return flip_site_script()


SECRET_FILE = "date-shift-secret.txt"


def site_secret(settings: Settings) -> str:
    """The site's date-shift secret: the ``date_shift_secret`` setting, else the one generated on first
    use into ``<data_dir>/date-shift-secret.txt`` (mode 0600). It is applied in place of the placeholder
    secret of the FLIP script (:func:`~flip_imaging.dicomedit.scripts.with_site_secret`) and never
    appears in a script text the API serves, nor in a log."""
    if settings.date_shift_secret:
        return check_secret(settings.date_shift_secret)
    path = settings.data_dir / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # first writer wins; a concurrent start reads the winner's secret
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return check_secret(path.read_text().strip())  # a hand-edited file must still be a valid secret


def validate(text: str) -> Script:
    """Parse ``text``; :class:`ScriptInvalid` with the parser's message (line and column) if it fails."""
    try:
        return compiled(text)
    except DicomEditSyntaxError as exc:
        raise ScriptInvalid(str(exc)) from exc


def _next_id(db: Session) -> int:
    value = int(get_pref(db, SCRIPT_ID_COUNTER, 0) or 0) + 1
    set_pref(db, SCRIPT_ID_COUNTER, value)
    return value


def _load(db: Session, key: str) -> dict[str, Any] | None:
    value = get_pref(db, key)
    return value if isinstance(value, dict) else None


def site_script(db: Session) -> StoredScript:
    """The site script; FLIP's script, enabled, when none was ever stored (stored on first read)."""
    value = _load(db, SITE_KEY)
    if value is None:
        value = {"id": _next_id(db), "text": flip_script_text(), "enabled": True}
        set_pref(db, SITE_KEY, value)
        db.flush()
    return StoredScript(int(value["id"]), str(value["text"]), bool(value.get("enabled", True)))


def set_site_script(db: Session, text: str) -> StoredScript:
    validate(text)
    current = site_script(db)
    value = {"id": _next_id(db), "text": text, "enabled": current.enabled}
    set_pref(db, SITE_KEY, value)
    return StoredScript(value["id"], text, current.enabled)


def set_site_enabled(db: Session, enabled: bool) -> None:
    current = site_script(db)
    set_pref(db, SITE_KEY, {"id": current.script_id, "text": current.text, "enabled": enabled})


def project_script(db: Session, project_id: str) -> StoredScript | None:
    value = _load(db, PROJECT_KEY.format(project_id))
    if value is None or value.get("text") is None:
        return None
    return StoredScript(int(value["id"]), str(value["text"]), bool(value.get("enabled", False)))


def project_enabled(db: Session, project_id: str) -> bool:
    value = _load(db, PROJECT_KEY.format(project_id))
    return bool(value and value.get("enabled", False))


def set_project_script(db: Session, project_id: str, text: str) -> StoredScript:
    """Store a project script; enabled as XNAT does when a script is set (an empty text disables it)."""
    if text.strip():
        validate(text)
    current = _load(db, PROJECT_KEY.format(project_id)) or {}
    enabled = bool(text.strip())
    value = {"id": _next_id(db), "text": text if text.strip() else None, "enabled": enabled}
    if not text.strip() and "enabled" in current:
        value["enabled"] = False
    set_pref(db, PROJECT_KEY.format(project_id), value)
    return StoredScript(value["id"], text, enabled)


def set_project_enabled(db: Session, project_id: str, enabled: bool) -> None:
    current = _load(db, PROJECT_KEY.format(project_id)) or {"id": _next_id(db), "text": None}
    current = dict(current)
    current["enabled"] = enabled
    set_pref(db, PROJECT_KEY.format(project_id), current)


# -- compiled script cache (parsing is costly; scripts change rarely) --------------------------------
_cache: dict[str, Script] = {}
_cache_lock = threading.Lock()


def compiled(text: str) -> Script:
    key = hashlib.sha256(text.encode()).hexdigest()
    with _cache_lock:
        script = _cache.get(key)
    if script is None:
        script = Script.parse(text)
        with _cache_lock:
            if len(_cache) > 64:
                _cache.clear()
            _cache[key] = script
    return script


def apply(script: Script, script_id: int, ds: Dataset, variables: dict[str, str | None]) -> ApplyResult:
    """Apply one compiled script and record it in (0012,0064), as the script with id ``script_id``,
    unless it rejected the file."""
    result = script.apply(ds, variables=variables)
    if not result.rejected:
        record_application(ds, script_id)
    return result


def record_application(ds: Dataset, script_id: int) -> None:
    """Append the De-identification Method Code Sequence item XNAT writes for one script run."""
    item = Dataset()
    item.CodeValue = str(script_id)
    item.CodingSchemeDesignator = "XNAT"
    item.CodingSchemeVersion = "1.0"
    item.CodeMeaning = CODE_MEANING
    if DEID_METHOD_CODE_SEQUENCE in ds and ds[DEID_METHOD_CODE_SEQUENCE].VR == "SQ":
        ds[DEID_METHOD_CODE_SEQUENCE].value.append(item)
    else:
        if DEID_METHOD_CODE_SEQUENCE in ds:
            del ds[DEID_METHOD_CODE_SEQUENCE]
        ds.DeidentificationMethodCodeSequence = Sequence([item])
