"""The command registry: XNAT command JSON, validated, stored, rendered, and its wrappers' enablement.

Commands are the JSON XNAT's Container Service accepts (``name``, ``image``, ``command-line``, ``mounts``,
``inputs``, ``outputs`` and the ``xnat`` wrapper list). Validation is strict so that a command that would
fail at launch is refused at registration with every reason at once.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flip_imaging.containers.matcher import MatcherSyntaxError, compile_matcher
from flip_imaging.containers.models import Command, Wrapper, WrapperProject


class CommandError(ValueError):
    """A command JSON that cannot be registered; ``reasons`` lists every problem found."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class NotFound(LookupError):
    """An unknown command, wrapper or container id."""


INPUT_TYPES = {"string", "boolean", "number", "integer", "file", "files", "directory"}
EXTERNAL_TYPES = {
    "Project",
    "Subject",
    "Session",
    "Scan",
    "Assessor",
    "Resource",
    "Config",
    "File",
    "string",
    "boolean",
    "number",
    "integer",
}
HANDLER_TYPES = {"Resource", "Assessor"}
COMMAND_TYPES = {"docker", "docker-setup", "docker-wrapup", "docker-cleanup"}
SCAN_TYPES = {
    f"xnat:{m}ScanData"
    for m in (
        "image",
        "mr",
        "ct",
        "pet",
        "cr",
        "dx",
        "mg",
        "us",
        "xa",
        "rf",
        "nm",
        "sc",
        "sr",
        "seg",
        "otherDicom",
        "io",
        "op",
        "opt",
        "es",
        "gm",
        "hd",
        "ecg",
        "eeg",
        "rt",
        "xc",
        "dx3DCraniofacial",
    )
}
SESSION_TYPES = {
    f"xnat:{m}SessionData"
    for m in (
        "image",
        "mr",
        "ct",
        "pet",
        "petmr",
        "cr",
        "dx",
        "mg",
        "us",
        "xa",
        "rf",
        "nm",
        "otherDicom",
        "io",
        "op",
        "opt",
        "es",
        "gm",
        "hd",
        "ecg",
        "eeg",
        "rt",
        "xc",
        "sm",
        "epsSession",
        "seg",
    )
}
KNOWN_CONTEXTS = (
    SCAN_TYPES
    | SESSION_TYPES
    | {
        "xnat:projectData",
        "xnat:subjectData",
        "xnat:experimentData",
        "xnat:subjectAssessorData",
        "xnat:imageAssessorData",
        "xnat:qcAssessmentData",
        "xnat:qcManualAssessorData",
        "xnat:abstractResource",
        "xnat:resourceCatalog",
        "site",
    }
)
TEMPLATE_RE = re.compile(r"#[A-Za-z0-9_\-]+#|\[[A-Z0-9_\-]+\]")
BUILTIN_COMMANDS = ("dcm2niix.json",)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false"))


def as_bool(value: Any, default: bool = False) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "yes", "y", "on")


def replacement_key(inp: dict[str, Any]) -> str:
    """XNAT's default replacement key is the input's name between ``#``."""
    return inp.get("replacement-key") or f"#{inp['name']}#"


def _named_list(data: dict[str, Any], key: str, where: str, reasons: list[str]) -> list[dict[str, Any]]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        reasons.append(f"{where}'{key}' must be a list")
        return []
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            reasons.append(f"{where}'{key}[{i}]' must be an object")
            continue
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            reasons.append(f"{where}'{key}[{i}]' has no name")
            continue
        if name in seen:
            reasons.append(f"{where}'{key}' has two entries named '{name}'")
            continue
        seen.add(name)
        out.append(item)
    return out


def _check_matcher(item: dict[str, Any], where: str, reasons: list[str]) -> None:
    matcher = item.get("matcher")
    if matcher in (None, ""):
        return
    if not isinstance(matcher, str):
        reasons.append(f"{where}: 'matcher' must be a string")
        return
    try:
        compile_matcher(matcher)
    except MatcherSyntaxError as exc:
        reasons.append(f"{where}: invalid matcher {matcher!r}: {exc}")


def validate_command(data: Any) -> list[str]:
    """Every reason why ``data`` is not a usable command JSON (empty when it is)."""
    if not isinstance(data, dict):
        return ["The command must be a JSON object"]
    reasons: list[str] = []
    for key in ("name", "command-line", "image"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            reasons.append(f"'{key}' is required and must be a non-empty string")
    for key in ("version", "description", "label", "schema-version", "info-url", "workdir"):
        if data.get(key) is not None and not isinstance(data[key], str):
            reasons.append(f"'{key}' must be a string")
    ctype = data.get("type", "docker")
    if ctype not in COMMAND_TYPES:
        reasons.append(f"'type' must be one of {sorted(COMMAND_TYPES)}, not {ctype!r}")
    mounts = _named_list(data, "mounts", "", reasons)
    mount_names = {m["name"] for m in mounts}
    for m in mounts:
        path = m.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            reasons.append(f"mount '{m['name']}': 'path' must be an absolute path")
        if m.get("writable") is not None and not _is_bool(m["writable"]):
            reasons.append(f"mount '{m['name']}': 'writable' must be true or false")
    inputs = _named_list(data, "inputs", "", reasons)
    input_names = {i["name"] for i in inputs}
    keys: set[str] = set()
    for inp in inputs:
        where = f"input '{inp['name']}'"
        itype = inp.get("type", "string")
        if itype not in INPUT_TYPES:
            reasons.append(f"{where}: unknown type {itype!r} (expected one of {sorted(INPUT_TYPES)})")
        for key in (
            "replacement-key",
            "command-line-flag",
            "command-line-separator",
            "true-value",
            "false-value",
            "description",
        ):
            if inp.get(key) is not None and not isinstance(inp[key], str):
                reasons.append(f"{where}: '{key}' must be a string")
        if inp.get("required") is not None and not _is_bool(inp["required"]):
            reasons.append(f"{where}: 'required' must be true or false")
        default = inp.get("default-value")
        if itype == "boolean" and default is not None and not _is_bool(default):
            reasons.append(f"{where}: 'default-value' must be true or false for a boolean input")
        if itype in ("number", "integer") and default not in (None, ""):
            try:
                float(default)
            except (TypeError, ValueError):
                reasons.append(f"{where}: 'default-value' must be a number")
        if isinstance(inp.get("replacement-key", ""), str):
            keys.add(replacement_key(inp))
    command_line = data.get("command-line")
    if isinstance(command_line, str):
        for token in TEMPLATE_RE.findall(command_line):
            if token not in keys:
                reasons.append(f"'command-line' uses {token}, which is not the replacement key of any input")
    outputs = _named_list(data, "outputs", "", reasons)
    output_names = {o["name"] for o in outputs}
    for out in outputs:
        if out.get("mount") not in mount_names:
            reasons.append(
                f"output '{out['name']}': 'mount' must name one of the mounts {sorted(mount_names)}"
            )
        for key in ("path", "glob"):
            if out.get(key) is not None and not isinstance(out[key], str):
                reasons.append(f"output '{out['name']}': '{key}' must be a string")
        if isinstance(out.get("path"), str) and ".." in out["path"].split("/"):
            reasons.append(f"output '{out['name']}': 'path' may not contain '..'")
    wrappers = _named_list(data, "xnat", "", reasons)
    for w in wrappers:
        reasons.extend(_validate_wrapper(w, input_names, mount_names, output_names))
    return reasons


def _validate_wrapper(
    w: dict[str, Any], input_names: set[str], mount_names: set[str], output_names: set[str]
) -> list[str]:
    reasons: list[str] = []
    where = f"wrapper '{w['name']}'"
    contexts = w.get("contexts", [])
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        reasons.append(f"{where}: 'contexts' must be a list of XNAT data types")
        contexts = []
    for c in contexts:
        if c not in KNOWN_CONTEXTS:
            reasons.append(f"{where}: unknown context {c!r}")
    externals = _named_list(w, "external-inputs", f"{where}: ", reasons)
    derived = _named_list(w, "derived-inputs", f"{where}: ", reasons)
    names: set[str] = set()
    for kind, items in (("external input", externals), ("derived input", derived)):
        for item in items:
            iwhere = f"{where} {kind} '{item['name']}'"
            if item["name"] in names:
                reasons.append(f"{where}: two wrapper inputs named '{item['name']}'")
            names.add(item["name"])
            if item.get("type") not in EXTERNAL_TYPES:
                reasons.append(f"{iwhere}: unknown type {item.get('type')!r}")
            target = item.get("provides-value-for-command-input")
            if target is not None and target not in input_names:
                reasons.append(
                    f"{iwhere}: 'provides-value-for-command-input' names no command input ({target!r})"
                )
            mount = item.get("provides-files-for-command-mount")
            if mount is not None and mount not in mount_names:
                reasons.append(f"{iwhere}: 'provides-files-for-command-mount' names no mount ({mount!r})")
            _check_matcher(item, iwhere, reasons)
            if kind == "derived input":
                parent = item.get("derived-from-wrapper-input")
                if parent not in names or parent == item["name"]:
                    reasons.append(
                        f"{iwhere}: 'derived-from-wrapper-input' must name an earlier wrapper "
                        f"input ({parent!r})"
                    )
    for h in _named_list(w, "output-handlers", f"{where}: ", reasons):
        hwhere = f"{where} output handler '{h['name']}'"
        if h.get("accepts-command-output") not in output_names:
            reasons.append(
                f"{hwhere}: 'accepts-command-output' names no command output "
                f"({h.get('accepts-command-output')!r})"
            )
        parent = h.get("as-a-child-of", h.get("as-a-child-of-wrapper-input"))
        if parent not in names:
            reasons.append(f"{hwhere}: 'as-a-child-of' must name a wrapper input ({parent!r})")
        if h.get("type", "Resource") not in HANDLER_TYPES:
            reasons.append(f"{hwhere}: unknown type {h.get('type')!r}")
        label = h.get("label")
        if not isinstance(label, str) or not label.strip() or "/" in label or label.startswith("."):
            reasons.append(f"{hwhere}: 'label' is required and must be a plain resource label")
    return reasons


# -- storage -----------------------------------------------------------------------------------------


def _same_command(db: Session, data: dict[str, Any]) -> Command | None:
    return db.scalar(
        select(Command).where(
            Command.name == data["name"],
            Command.version.is_(None)
            if data.get("version") is None
            else Command.version == data.get("version"),
            Command.image == data.get("image"),
        )
    )


def add_command(db: Session, data: Any, *, enable_wrappers: bool = False) -> Command:
    """Validate and store a command with its wrappers (flushed, so ids are set)."""
    reasons = validate_command(data)
    if reasons:
        raise CommandError(reasons)
    if _same_command(db, data) is not None:
        raise CommandError(
            [
                f"A command named '{data['name']}' with version {data.get('version')!r} and "
                f"image '{data['image']}' already exists"
            ]
        )
    definition = {k: v for k, v in data.items() if k not in ("id", "xnat")}
    cmd = Command(
        name=data["name"], version=data.get("version"), image=data.get("image"), definition=definition
    )
    db.add(cmd)
    db.flush()
    for w in data.get("xnat") or []:
        db.add(
            Wrapper(
                command_id=cmd.id,
                name=w["name"],
                definition={k: v for k, v in w.items() if k != "id"},
                enabled=enable_wrappers,
            )
        )
    db.flush()
    return cmd


def update_command(db: Session, command_id: int, data: Any) -> Command:
    """Replace a command's JSON; wrappers keep their ids (and enablement) when their names stay."""
    cmd = get_command(db, command_id)
    if isinstance(data, dict):
        data = {**data, "name": data.get("name", cmd.name)}
    reasons = validate_command(data)
    if reasons:
        raise CommandError(reasons)
    other = _same_command(db, data)
    if other is not None and other.id != cmd.id:
        raise CommandError([f"Another command named '{data['name']}' with that version and image exists"])
    cmd.name, cmd.version, cmd.image = data["name"], data.get("version"), data.get("image")
    cmd.definition = {k: v for k, v in data.items() if k not in ("id", "xnat")}
    existing = {w.name: w for w in wrappers_of(db, cmd.id)}
    for w in data.get("xnat") or []:
        body = {k: v for k, v in w.items() if k != "id"}
        if w["name"] in existing:
            existing.pop(w["name"]).definition = body
        else:
            db.add(Wrapper(command_id=cmd.id, name=w["name"], definition=body, enabled=False))
    for gone in existing.values():
        db.delete(gone)
    db.flush()
    return cmd


def delete_command(db: Session, command_id: int) -> None:
    cmd = get_command(db, command_id)
    for w in wrappers_of(db, cmd.id):
        db.delete(w)
    db.flush()
    db.delete(cmd)
    db.flush()


def get_command(db: Session, command_id: int) -> Command:
    cmd = db.get(Command, command_id)
    if cmd is None:
        raise NotFound(f"No command with id {command_id}")
    return cmd


def wrappers_of(db: Session, command_id: int) -> list[Wrapper]:
    return list(db.scalars(select(Wrapper).where(Wrapper.command_id == command_id).order_by(Wrapper.id)))


def get_wrapper(db: Session, wrapper_id: int) -> Wrapper:
    w = db.get(Wrapper, wrapper_id)
    if w is None:
        raise NotFound(f"No wrapper with id {wrapper_id}")
    return w


def find_wrapper(db: Session, command_id: int, name: str) -> Wrapper:
    get_command(db, command_id)
    w = db.scalar(select(Wrapper).where(Wrapper.command_id == command_id, Wrapper.name == name))
    if w is None:
        raise NotFound(f"Command {command_id} has no wrapper named '{name}'")
    return w


def list_commands(
    db: Session, *, name: str | None = None, version: str | None = None, image: str | None = None
) -> list[Command]:
    q = select(Command).order_by(Command.id)
    if name:
        q = q.where(Command.name == name)
    if version:
        q = q.where(Command.version == version)
    if image:
        q = q.where(Command.image == image)
    return list(db.scalars(q))


def wrapper_json(w: Wrapper) -> dict[str, Any]:
    return {"id": w.id, "name": w.name, **{k: v for k, v in w.definition.items() if k != "name"}}


def command_json(db: Session, cmd: Command) -> dict[str, Any]:
    body = {"id": cmd.id, **cmd.definition}
    body["xnat"] = [wrapper_json(w) for w in wrappers_of(db, cmd.id)]
    return body


# -- enablement --------------------------------------------------------------------------------------


def set_site_enabled(db: Session, wrapper: Wrapper, enabled: bool) -> None:
    wrapper.enabled = enabled
    db.flush()


def project_enabled(db: Session, wrapper: Wrapper, project_id: str) -> bool:
    row = db.scalar(
        select(WrapperProject).where(
            WrapperProject.wrapper_id == wrapper.id, WrapperProject.project_id == project_id
        )
    )
    return bool(row and row.enabled)


def set_project_enabled(db: Session, wrapper: Wrapper, project_id: str, enabled: bool) -> None:
    row = db.scalar(
        select(WrapperProject).where(
            WrapperProject.wrapper_id == wrapper.id, WrapperProject.project_id == project_id
        )
    )
    if row is None:
        db.add(WrapperProject(wrapper_id=wrapper.id, project_id=project_id, enabled=enabled))
    else:
        row.enabled = enabled
    db.flush()


def builtin_command_json(filename: str) -> dict[str, Any]:
    text = resources.files("flip_imaging.containers").joinpath("builtin", filename).read_text("utf-8")
    return json.loads(text)


def install_builtins(db: Session) -> list[Command]:
    """Register the shipped commands (dcm2niix), wrappers enabled site-wide; skip ones already present.

    Run once by the migration that creates the registry, so a site that deletes one keeps it deleted.
    """
    added = []
    for filename in BUILTIN_COMMANDS:
        data = builtin_command_json(filename)
        if _same_command(db, data) is None:
            added.append(add_command(db, data, enable_wrappers=True))
    return added


DCM2NIIX_COMMAND = "dcm2niix"
DCM2NIIX_WRAPPER = "dcm2niix-scan"


def dcm2niix_wrapper(db: Session) -> Wrapper:
    """The wrapper FLIP's dicom_to_nifti uses: ``dcm2niix-scan`` of the (first) ``dcm2niix`` command."""
    w = db.scalar(
        select(Wrapper)
        .join(Command, Command.id == Wrapper.command_id)
        .where(Command.name == DCM2NIIX_COMMAND, Wrapper.name == DCM2NIIX_WRAPPER)
        .order_by(Wrapper.id)
        .limit(1)
    )
    if w is None:
        raise NotFound("The dcm2niix command (wrapper dcm2niix-scan) is not registered")
    return w
