"""From a wrapper and launch inputs to a runnable plan, and from a finished process to checked outputs.

There is no Docker at a trust: a command's ``image`` is documentation only and its command line runs as a
local process. Mount paths in the command line (``/input``, ``/output``) are rewritten to per-job scratch
folders; the executable is looked up on this machine (``dcm2niix`` is the binary of the ``dcm2niix``
wheel). The plan is plain JSON stored with the container, so any worker, on any machine sharing the
database and the archive, can run it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shlex
import shutil
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flip_imaging.archive.models import Experiment, File, Project, ProjectAlias, Resource, Scan
from flip_imaging.containers.matcher import MatcherSyntaxError, compile_matcher
from flip_imaging.containers.models import Command, Wrapper
from flip_imaging.containers.registry import SCAN_TYPES, as_bool, replacement_key


class LaunchError(ValueError):
    """A launch that cannot start; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


URI_RE = re.compile(
    r"^(?:/data)?(?:/archive)?(?:/projects/(?P<project>[^/]+))?(?:/subjects/(?P<subject>[^/]+))?"
    r"/experiments/(?P<experiment>[^/]+)(?:/scans/(?P<scan>[^/]+))?/?$"
)


def scan_uri(scan: Scan) -> str:
    return f"/archive/experiments/{scan.experiment.id}/scans/{scan.scan_id}"


def _project_by_id(db: Session, pid: str) -> Project | None:
    project = db.scalar(select(Project).where(Project.id == pid))
    if project is None:
        project = db.scalar(
            select(Project)
            .join(ProjectAlias, ProjectAlias.project_pk == Project.pk)
            .where(ProjectAlias.alias == pid)
        )
    return project


def resolve_uri(db: Session, uri: str, project_hint: str | None = None) -> tuple[Experiment, Scan | None]:
    """An experiment (and scan) from an XNAT URI such as ``/archive/experiments/XNAT_E00001/scans/1``."""
    m = URI_RE.match(uri.strip())
    if m is None:
        raise LaunchError(
            f"'{uri}' is not an XNAT experiment or scan URI (e.g. /archive/experiments/XNAT_E00001/scans/1)"
        )
    exp = db.scalar(select(Experiment).where(Experiment.id == m["experiment"]))
    project_id = m["project"] or project_hint
    if exp is None and project_id:
        project = _project_by_id(db, project_id)
        if project is not None:
            exp = db.scalar(
                select(Experiment).where(
                    Experiment.project_pk == project.pk, Experiment.label == m["experiment"]
                )
            )
    if exp is None:
        raise LaunchError(f"No experiment '{m['experiment']}' for '{uri}'", 404)
    if m["scan"] is None:
        return exp, None
    scan = db.scalar(select(Scan).where(Scan.experiment_pk == exp.pk, Scan.scan_id == m["scan"]))
    if scan is None:
        raise LaunchError(f"Experiment {exp.id} has no scan '{m['scan']}'", 404)
    return exp, scan


def resources_of(db: Session, scan: Scan) -> list[Resource]:
    return list(db.scalars(select(Resource).where(Resource.scan_pk == scan.pk).order_by(Resource.pk)))


def resource_object(res: Resource, uri_base: str) -> dict[str, Any]:
    return {
        "id": str(res.xnat_id),
        "label": res.label,
        "format": res.format,
        "content": res.content,
        "uri": f"{uri_base}/resources/{res.xnat_id}",
        "type": "Resource",
    }


def scan_object(db: Session, scan: Scan, resources: list[Resource] | None = None) -> dict[str, Any]:
    """The scan as XNAT's Container Service serialises it for matchers and derived inputs."""
    uri = scan_uri(scan)
    if resources is None:
        resources = resources_of(db, scan)
    return {
        "id": scan.scan_id,
        "label": scan.scan_id,
        "xsiType": scan.xsi_type,
        "scan-type": scan.type,
        "series-description": scan.series_description,
        "modality": scan.modality,
        "frames": scan.frames,
        "quality": scan.quality,
        "uri": uri,
        "integer-id": scan.pk,
        "project-id": scan.experiment.project.id,
        "session-id": scan.experiment.id,
        "type": "Scan",
        "resources": [resource_object(r, uri) for r in resources],
    }


def _matches(matcher: str | None, obj: dict[str, Any]) -> bool:
    if not matcher:
        return True
    try:
        return bool(compile_matcher(matcher)(obj))
    except MatcherSyntaxError as exc:  # validated at registration; only a hand-edited row gets here
        raise LaunchError(f"invalid matcher {matcher!r}: {exc}") from exc


def find_executable(name: str) -> str | None:
    """Where to run ``name`` from: the wheel's dcm2niix binary, the venv's bin, then ``PATH``."""
    if name == "dcm2niix":
        try:
            import dcm2niix

            if Path(dcm2niix.bin).exists():
                return str(dcm2niix.bin)
        except ImportError:
            pass
    if name.startswith("/"):
        return name if Path(name).is_file() else None
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


@dataclass
class Plan:
    """What a worker needs to run a container; ``to_json`` is stored in ``containers.plan``."""

    inputs: dict[str, Any]
    command_line: str
    args: list[str]
    mounts: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    scan_pk: int
    conversion: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "command-line": self.command_line,
            "args": self.args,
            "mounts": self.mounts,
            "outputs": self.outputs,
            "scan-pk": self.scan_pk,
            "conversion": self.conversion,
        }


def _command_input_text(inp: dict[str, Any], value: Any) -> str:
    if inp.get("type", "string") == "boolean":
        raw = value if value not in (None, "") else inp.get("default-value")
        flag_value = inp.get("true-value", "true") if as_bool(raw) else inp.get("false-value", "false")
    else:
        raw = value if value is not None else inp.get("default-value")
        flag_value = "" if raw is None else str(raw)
        if inp.get("type") in ("number", "integer") and flag_value != "":
            try:
                float(flag_value)
            except ValueError as exc:
                raise LaunchError(f"input '{inp['name']}' must be a number, not {flag_value!r}") from exc
    if flag_value == "":
        return ""
    flag = inp.get("command-line-flag")
    if flag:
        return f"{flag}{inp.get('command-line-separator', ' ')}{flag_value}"
    return flag_value


def plan_launch(
    db: Session,
    command: Command,
    wrapper: Wrapper,
    root: str,
    params: dict[str, Any],
    project_id: str | None,
    known: Scan | None = None,
) -> tuple[Plan, Scan]:
    """Resolve a launch request into a :class:`Plan` (raises :class:`LaunchError` with the reason).

    ``known``: the scan the root URI names, when the caller has it loaded already (saves the lookup).
    """
    cdef, wdef = command.definition, wrapper.definition
    externals = wdef.get("external-inputs") or []
    by_name = {e["name"]: e for e in externals}
    if root not in by_name:
        raise LaunchError(
            f"Wrapper '{wrapper.name}' has no external input named '{root}' "
            f"(its external inputs: {sorted(by_name)})"
        )
    root_input = by_name[root]
    value = params.get(root)
    if not isinstance(value, str) or not value.strip():
        raise LaunchError(f"Input '{root}' is required: give the URI of the object to run on")
    if known is not None and value == scan_uri(known):
        exp, scan = known.experiment, known
    else:
        exp, scan = resolve_uri(db, value, project_id)
    if project_id is not None and exp.project.id != project_id:
        raise LaunchError(f"'{value}' is not in project {project_id}")
    contexts = wdef.get("contexts") or []
    if root_input.get("type") != "Scan":
        raise LaunchError(
            f"Wrapper '{wrapper.name}' runs on {root_input.get('type')} objects "
            f"(contexts {contexts}); this archive runs wrappers on scans only"
        )
    if scan is None:
        raise LaunchError(f"Input '{root}' must be a scan URI (.../experiments/{{id}}/scans/{{scan}})")
    scan_contexts = {scan.xsi_type, "xnat:imageScanData"}
    if contexts and not scan_contexts & set(contexts):
        raise LaunchError(
            f"Wrapper '{wrapper.name}' runs in contexts {contexts}, not on a scan ({scan.xsi_type})"
        )
    scan_resources = resources_of(db, scan)
    sobj = scan_object(db, scan, scan_resources)
    if not _matches(root_input.get("matcher"), sobj):
        raise LaunchError(
            f"Scan {scan.scan_id} of {exp.id} does not match input '{root}' ({root_input.get('matcher')})"
        )
    # wrapper inputs: the root, derived resources and properties, and plain values
    wrapper_values: dict[str, Any] = {root: sobj["uri"]}
    objects: dict[str, dict[str, Any]] = {root: sobj}
    resource_pks: dict[str, int] = {}
    for ext in externals:
        if ext["name"] != root:
            if ext.get("type") in ("Project", "Subject", "Session", "Scan", "Assessor", "Resource"):
                raise LaunchError(
                    f"Wrapper '{wrapper.name}' needs a second XNAT object input "
                    f"'{ext['name']}', which this archive does not support"
                )
            v = params.get(ext["name"], ext.get("default-value"))
            if v in (None, "") and as_bool(ext.get("required")):
                raise LaunchError(f"Input '{ext['name']}' is required")
            wrapper_values[ext["name"]] = v
    for der in wdef.get("derived-inputs") or []:
        parent = objects.get(der.get("derived-from-wrapper-input", ""))
        if parent is None:
            raise LaunchError(f"Derived input '{der['name']}' has no parent object")
        if der.get("type") == "Resource":
            found = [r for r in parent.get("resources", []) if _matches(der.get("matcher"), r)]
            if not found:
                raise LaunchError(
                    f"Scan {scan.scan_id} of {exp.id} has no resource matching derived input "
                    f"'{der['name']}' ({der.get('matcher')})"
                )
            res = next(r for r in scan_resources if str(r.xnat_id) == found[0]["id"])
            resource_pks[der["name"]] = res.pk
            objects[der["name"]] = found[0]
            wrapper_values[der["name"]] = found[0]["uri"]
        else:
            prop = der.get("derived-from-xnat-object-property") or "id"
            wrapper_values[der["name"]] = parent.get(prop)
    # command inputs: explicit parameters, wrapper bindings, defaults
    cmd_values: dict[str, Any] = {}
    for item in list(externals) + list(wdef.get("derived-inputs") or []):
        target = item.get("provides-value-for-command-input")
        if target:
            cmd_values[target] = wrapper_values.get(item["name"])
    command_line = cdef["command-line"]
    shown: dict[str, Any] = dict(wrapper_values)
    for inp in cdef.get("inputs") or []:
        name = inp["name"]
        val = params.get(name, cmd_values.get(name))
        if name in params and _escapes_scratch(params[name]):
            # commands run as processes of the server, not in a container: a launcher-supplied value
            # must not point the command at paths outside its scratch folders (e.g. "-o /elsewhere")
            raise LaunchError(f"Input '{name}' may not contain paths ('/', '\\' or '..')")
        if val is None and inp.get("default-value") is None and as_bool(inp.get("required")):
            raise LaunchError(f"Input '{name}' is required")
        text = _command_input_text(inp, val)
        shown[name] = val if val is not None else inp.get("default-value")
        command_line = command_line.replace(replacement_key(inp), text)
    try:
        args = shlex.split(command_line)
    except ValueError as exc:
        raise LaunchError(f"The command line cannot be parsed after substitution: {exc}") from exc
    if not args:
        raise LaunchError("The command line is empty")
    mounts = []
    for m in cdef.get("mounts") or []:
        source = next(
            (
                resource_pks[d["name"]]
                for d in wdef.get("derived-inputs") or []
                if d.get("provides-files-for-command-mount") == m["name"] and d["name"] in resource_pks
            ),
            None,
        )
        mounts.append(
            {
                "name": m["name"],
                "path": m["path"].rstrip("/") or "/",
                "writable": as_bool(m.get("writable")),
                "resource-pk": source,
            }
        )
    outputs = []
    handlers = {h.get("accepts-command-output"): h for h in wdef.get("output-handlers") or []}
    conversion = False
    for out in cdef.get("outputs") or []:
        handler = handlers.get(out["name"])
        if handler is None:
            continue
        parent = handler.get("as-a-child-of", handler.get("as-a-child-of-wrapper-input"))
        if parent != root:
            raise LaunchError(
                f"Output handler '{handler['name']}' attaches to '{parent}'; this archive "
                "attaches outputs to the root scan only"
            )
        label = handler.get("label")
        conversion = conversion or label == "NIFTI"
        outputs.append(
            {
                "name": out["name"],
                "mount": out["mount"],
                "path": out.get("path") or "",
                "glob": out.get("glob") or "",
                "required": as_bool(out.get("required")),
                "label": label,
                "format": handler.get("format"),
                "type": handler.get("type", "Resource"),
            }
        )
    plan = Plan(
        inputs=shown,
        command_line=command_line,
        args=args,
        mounts=mounts,
        outputs=outputs,
        scan_pk=scan.pk,
        conversion=conversion,
    )
    return plan, scan


# -- execution helpers -------------------------------------------------------------------------------


def map_args(args: list[str], mount_dirs: dict[str, Path]) -> list[str]:
    """Rewrite container paths (``/input``, ``/output/x``, ``--out=/output``) to the job's folders."""
    ordered = sorted(mount_dirs.items(), key=lambda kv: -len(kv[0]))

    def one(token: str) -> str:
        prefix, eq, rest = token.partition("=") if token.startswith("-") and "=" in token else ("", "", token)
        for path, local in ordered:
            if rest == path or rest.startswith(path + "/"):
                rest = str(local) + rest[len(path) :]
                break
        return prefix + eq + rest

    return [one(a) for a in args]


def files_fingerprint(files: Iterable[tuple[str, str]]) -> str:
    """SHA-256 over a resource's sorted ``(path, sha256)`` catalog pairs.

    Exact (a file added, removed or rewritten changes it) yet cheap: it reads catalog rows, never the
    files. Comparing it with the one a conversion recorded tells whether the NIfTI is still current.
    """
    digest = hashlib.sha256()
    for path, sha in sorted(files):
        digest.update(f"{path}\0{sha}\n".encode())
    return digest.hexdigest()


@dataclass
class LinkedInput:
    """The catalogued files a job linked (relative paths) and their fingerprint: what the job ran on."""

    paths: list[str]
    fingerprint: str

    def snapshot(self, resource: Resource) -> dict[str, Any]:
        return {
            "resource-pk": resource.pk,
            "label": resource.label,
            "files": len(self.paths),
            "fingerprint": self.fingerprint,
        }


def link_resource_files(db: Session, archive_root: Path, resource: Resource, dest: Path) -> LinkedInput:
    """Hard-link (else symlink, else copy) a resource's catalogued files into ``dest``.

    Only catalogued files are linked, so a file being written into the resource by another transaction
    (still in staging) is never seen half-written; the links freeze the job's input, so the fingerprint
    of the rows read here is exactly what the job converts.
    """
    folder, into = f"{archive_root / resource.path}/", f"{dest}/"
    made: set[str] = set()
    rows = db.execute(
        select(File.path, File.sha256).where(File.resource_pk == resource.pk).order_by(File.path)
    ).all()
    for rel, _sha in rows:
        src, target = folder + rel, into + rel  # catalogued paths are normalised relative paths
        if "/" in rel and (parent := rel.rsplit("/", 1)[0]) not in made:
            os.makedirs(into + parent, exist_ok=True)
            made.add(parent)
        try:
            os.link(src, target)
        except OSError:
            try:
                os.symlink(src, target)
            except OSError:
                shutil.copyfile(src, target)
    return LinkedInput([rel for rel, _ in rows], files_fingerprint((rel, sha) for rel, sha in rows))


def nifti_shape(path: Path) -> tuple[int, ...]:
    """The dimensions in a NIfTI-1/2 header (``.nii`` or ``.nii.gz``), read without loading voxels."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:  # type: ignore[operator]
        head = fh.read(540)
    if len(head) < 348:
        raise ValueError(f"{path.name}: too short to be NIfTI")
    for endian in ("<", ">"):
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            break
        if size == 540:
            dim = struct.unpack(endian + "8q", head[16:80])
            break
    else:
        raise ValueError(f"{path.name}: not a NIfTI header")
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise ValueError(f"{path.name}: bad number of dimensions {ndim}")
    return tuple(int(d) for d in dim[1 : ndim + 1])


def nifti_zooms(path: Path) -> tuple[float, ...]:
    """Voxel sizes (``pixdim[1:]``) from a NIfTI-1 header (NIfTI-2: ``()``)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:  # type: ignore[operator]
        head = fh.read(348)
    for endian in ("<", ">"):
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            return tuple(float(v) for v in struct.unpack(endian + "8f", head[76:108])[1:])
    return ()


_FRAMES_TAG = b"\x28\x00\x08\x00"  # (0028,0008) Number of Frames, little endian
_ROWS_TAG = b"\x28\x00\x10\x00"  # (0028,0010) Rows
_HEAD_BYTES = 16 * 1024


def count_dicom_frames(folder: Path, paths: Iterable[str] | None = None) -> tuple[int, int, bool]:
    """(instances, frames, mosaic) of the DICOM image files in ``folder``, reading headers only.

    ``paths`` (relative to ``folder``) are the files a job linked; without them the folder is walked.
    Runs beside the converter, so it is kept cheap: a file whose first 16 KiB name Rows but not Number
    of Frames is a single-frame image (one ``read``, no Python file object); anything else is parsed
    properly with pydicom.
    """
    if paths is None:
        names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    else:
        names = sorted(paths)
    instances = frames = 0
    mosaic = False
    base = str(folder)
    for rel in names:
        path = os.path.join(base, rel)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            head = os.read(fd, _HEAD_BYTES)
        except OSError:
            continue
        finally:
            os.close(fd)
        if head[128:132] == b"DICM" and _ROWS_TAG in head and _FRAMES_TAG not in head:
            instances += 1
            frames += 1
            mosaic = mosaic or b"MOSAIC" in head
            continue
        import pydicom

        try:
            ds = pydicom.dcmread(
                path,
                stop_before_pixels=True,
                specific_tags=["NumberOfFrames", "ImageType", "Rows", "SOPClassUID"],
            )
        except Exception:
            continue
        if "Rows" not in ds:
            continue
        instances += 1
        try:
            frames += max(1, int(ds.get("NumberOfFrames", 1) or 1))
        except (TypeError, ValueError):
            frames += 1
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        mosaic = mosaic or "MOSAIC" in image_type
    return instances, frames, mosaic


def output_files(folder: Path, glob: str = "") -> list[Path]:
    if not folder.exists():
        return []
    pattern = glob or "**/*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and not p.is_symlink())


def check_nifti_slices(nifti_files: list[Path], frames: int, mosaic: bool) -> str | None:
    """None when the NIfTI volumes hold as many slices as the DICOM series had frames, else why not.

    dcm2niix may split a series (echoes, orientations) into several files, so the total over all files
    must equal the frames read; a Siemens mosaic packs many slices per frame and is only checked for
    a non-empty result.
    """
    if not nifti_files:
        return "dcm2niix produced no NIfTI file"
    total = 0
    for path in nifti_files:
        try:
            shape = nifti_shape(path)
        except (OSError, ValueError, EOFError) as exc:
            return f"{path.name} is not a readable NIfTI file: {exc}"
        slices = shape[2] if len(shape) >= 3 else 1
        volumes = 1
        for d in shape[3:]:
            volumes *= max(1, d)
        total += slices * volumes
    if mosaic:
        return None
    if total != frames:
        return (
            f"NIfTI holds {total} slice(s) but the DICOM series has {frames} image frame(s): "
            "refusing a conversion that dropped or invented slices"
        )
    return None


SCAN_XSI_TYPES = SCAN_TYPES


def _escapes_scratch(value: Any) -> bool:
    text = str(value)
    return "/" in text or "\\" in text or ".." in text or text.startswith("~")
