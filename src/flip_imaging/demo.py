"""``flip-imaging demo``: the whole trust-side imaging path on one machine, in about a minute.

It starts the archive (REST API, DICOM receiver, event dispatcher, container workers) on a fresh data
directory, then acts as FLIP would: creates a project with ``dicom_to_nifti`` on through the REST API,
sends a generated multi-series study with planted PHI over DICOM C-STORE, waits until the study is
archived and every scan converted, and shows what happened — the session tree, original headers beside
the de-identified ones, a byte-level check that no planted PHI reached the archive, and the NIfTI files
with their shapes. Any failed step ends the command with a non-zero exit code.
"""

from __future__ import annotations

import gzip
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from flip_imaging.netutil import free_port
from flip_imaging.waiting import WaitTimeout, wait_until

PROJECT = "FLIPDEMO"
SUBJECT = "DEMO01"
SESSION = "ACC0001"
STORESCU = "/usr/bin/storescu"
#: tags shown side by side (keyword, label)
SHOWN_TAGS = (
    ("PatientName", "Patient's Name"),
    ("PatientID", "Patient ID"),
    ("PatientBirthDate", "Birth Date"),
    ("AccessionNumber", "Accession Number"),
    ("StudyDate", "Study Date"),
    ("InstitutionName", "Institution"),
    ("ReferringPhysicianName", "Referring Physician"),
    ("StudyDescription", "Study Description"),
    ("PatientComments", "Patient Comments"),
    ("StudyInstanceUID", "Study Instance UID"),
)

console = Console()


class DemoFailed(RuntimeError):
    """A step of the demo did not do what it should; the message says which and why."""




def _wait(what: str, predicate: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    try:
        return wait_until(predicate, timeout, interval, what=what)
    except WaitTimeout:
        raise DemoFailed(f"timed out after {timeout:.0f} s waiting for {what}") from None


def _rows(http: Any, url: str) -> list[dict[str, Any]]:
    r = http.get(url, params={"format": "json"})
    if r.status_code != 200:
        raise DemoFailed(f"GET {url} answered {r.status_code}: {r.text[:200]}")
    return list(r.json().get("ResultSet", {}).get("Result", []))


def _check(response: Any, what: str) -> Any:
    if response.status_code not in (200, 201):
        raise DemoFailed(f"{what}: HTTP {response.status_code} {response.text[:300]}")
    return response


class _Server:
    """The archive with all its background services, in this process (as ``flip-imaging serve``)."""

    def __init__(self, data_dir: Path, port: int, dicom_port: int) -> None:
        from flip_imaging.auth.bootstrap import ensure_admin
        from flip_imaging.config import Settings
        from flip_imaging.context import create_context

        self.settings = Settings(
            data_dir=data_dir,
            port=port,
            dicom_port=dicom_port,
            session_quiet_seconds=2.0,
            container_workers=2,
        )
        self.ctx = create_context(self.settings)
        # as `serve` does: a generated password in an owner-only file, never printed
        boot = ensure_admin(self.ctx)
        assert boot.password_file is not None
        self.password_file = boot.password_file
        self.password = boot.password_file.read_text().strip()
        self.server: Any = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def start(self) -> None:
        import uvicorn

        from flip_imaging.app import create_app

        config = uvicorn.Config(
            create_app(self.ctx), host="127.0.0.1", port=self.settings.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="demo-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise DemoFailed("the server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)
        self.ctx.close()


def _make_study(folder: Path) -> tuple[list[Path], Any]:
    """A three-series study (two CT, one MR) with planted PHI and FLIP-style routing keys."""
    from flip_imaging.synthetic import PlantedPHI, SeriesSpec, make_series, write_series

    phi = PlantedPHI("DM")
    specs = (
        SeriesSpec("CT", 40, 256, 256, 1, "CT CHEST AXIAL 5mm"),
        SeriesSpec("MR", 24, 128, 128, 2, None, "ISO_IR 192"),
        SeriesSpec("CT", 20, 256, 256, 3, None),
    )
    paths: list[Path] = []
    for spec in specs:

        def routed(datasets: Any) -> Any:
            for ds in datasets:
                ds.PatientComments = f"Project: {PROJECT} Subject: {SUBJECT} Session: {SESSION}"
                yield ds

        paths += write_series(folder, routed(make_series(spec, phi)))
    return paths, phi


def _send(port: int, folder: Path, ae_title: str) -> str:
    """C-STORE every file in ``folder`` to the receiver; DCMTK's storescu when installed, else pynetdicom."""
    if Path(STORESCU).exists():
        run = subprocess.run(
            [
                STORESCU,
                "-aet",
                "FLIPDEMO",
                "-aec",
                ae_title,
                "+sd",
                "+r",
                "127.0.0.1",
                str(port),
                str(folder),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if run.returncode != 0:
            raise DemoFailed(f"storescu failed ({run.returncode}): {run.stderr[-500:]}")
        return "DCMTK storescu"
    import pydicom
    from pynetdicom import AE, StoragePresentationContexts

    ae = AE(ae_title="FLIPDEMO")
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        raise DemoFailed("the DICOM receiver refused the association")
    try:
        for path in sorted(folder.iterdir()):
            status = assoc.send_c_store(pydicom.dcmread(path))
            if status is None or status.Status != 0:
                raise DemoFailed(f"C-STORE of {path.name} failed: {status}")
    finally:
        assoc.release()
    return "pynetdicom"


def _value(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return "[dim](removed)[/]"
    text = str(value)
    return text if text.strip() else "[dim](empty)[/]"


def run_demo(data_dir: Path, keep_running: bool, port: int, dicom_port: int, timeout: float) -> int:
    import httpx
    import pydicom

    from flip_imaging.containers.runner import nifti_shape, nifti_zooms
    from flip_imaging.synthetic import find_leaks

    data_dir.mkdir(parents=True, exist_ok=True)
    if any(data_dir.iterdir()):
        raise DemoFailed(f"{data_dir} is not empty: the demo needs a fresh data directory")
    originals = data_dir / "demo-originals"
    console.rule("[bold]flip-imaging demo")
    console.print(f"data directory: {data_dir}")
    server = _Server(data_dir, port or free_port(), dicom_port or free_port())
    server.start()
    try:
        http = httpx.Client(base_url=server.url, timeout=60)
        _check(http.get("/data/JSESSION", auth=("admin", server.password)), "log in")
        console.print(
            f"archive running at {server.url}; DICOM receiver "
            f"{server.settings.dicom_ae_title}@127.0.0.1:{server.settings.dicom_port}"
        )

        # 1. the project, as FLIP's trust agent creates it
        _check(
            http.put(
                f"/data/archive/projects/{PROJECT}",
                params={
                    "xsiType": "xnat:projectData",
                    "req_format": "qs",
                    "xnat:projectData/name": "FLIP demo project",
                    "xnat:projectData/secondary_ID": "flip-demo",
                },
            ),
            "create the project",
        )
        _check(http.put(f"/data/projects/{PROJECT}/prearchive_code/4"), "set auto-archive")
        switch = _check(
            http.put(f"/xapi/projects/{PROJECT}/dicom_to_nifti", params={"enabled": "true"}),
            "turn dicom_to_nifti on",
        ).json()
        if not switch.get("enabled"):
            raise DemoFailed("dicom_to_nifti did not turn on")
        console.print(
            f"project [bold]{PROJECT}[/] created; dicom_to_nifti on "
            f"(subscription {switch.get('subscription-id')})"
        )

        # 2. a study with planted PHI, sent over DICOM
        files, phi = _make_study(originals)
        tokens = phi.search_tokens()
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            send = bar.add_task("C-STORE", total=len(files))
            how = _send(server.settings.dicom_port, originals, server.settings.dicom_ae_title)
            bar.update(send, completed=len(files), description=f"C-STORE ({how})")

            archive = bar.add_task("archive", total=3)

            def archived() -> list[dict[str, Any]] | None:
                exps = _rows(http, f"/data/projects/{PROJECT}/experiments")
                if not exps:
                    return None
                scans = _rows(http, f"/data/experiments/{exps[0]['ID']}/scans")
                bar.update(archive, completed=len(scans))
                return exps if len(scans) >= 3 else None

            exps = _wait("the study to be archived", archived, timeout)
            if len(exps) != 1:
                raise DemoFailed(f"expected one session, found {len(exps)}")
            exp = exps[0]
            convert = bar.add_task("dcm2niix", total=3)

            def converted() -> dict[str, Any] | None:
                state = _check(
                    http.get(f"/xapi/projects/{PROJECT}/experiments/{exp['ID']}/conversion"),
                    "conversion state",
                ).json()
                done = sum(1 for s in state["scans"] if s["status"] == "done")
                bar.update(convert, completed=done)
                failed = [s for s in state["scans"] if s["status"] == "failed"]
                if failed:
                    raise DemoFailed(
                        f"conversion failed for scan(s) {[s['scan'] for s in failed]}: "
                        f"{failed[0].get('message')}"
                    )
                return state if state["complete"] else None

            state = _wait("every scan to be converted", converted, timeout)

        # 3. what is in the archive
        scans = _rows(http, f"/data/experiments/{exp['ID']}/scans")
        tree = Tree(f"[bold]{PROJECT}[/]")
        subject_node = tree.add(f"subject {exp.get('subject_label') or exp.get('subject_ID') or SUBJECT}")
        exp_node = subject_node.add(
            f"session [bold]{exp.get('label')}[/] ({exp['ID']}, {exp.get('xsiType', '')})"
        )
        nifti_rows: list[tuple[str, str, str, tuple[int, ...]]] = []
        first_dicom: tuple[str, str] | None = None
        for scan in sorted(scans, key=lambda s: int(s["ID"]) if str(s["ID"]).isdigit() else 0):
            sid = scan["ID"]
            node = exp_node.add(f"scan {sid}  {scan.get('type') or ''}  {scan.get('xsiType', '')}")
            for res in _rows(http, f"/data/experiments/{exp['ID']}/scans/{sid}/resources"):
                label = res.get("label")
                files_ = _rows(http, f"/data/experiments/{exp['ID']}/scans/{sid}/resources/{label}/files")
                node.add(f"{label}: {len(files_)} file(s)")
                if label == "DICOM" and files_ and first_dicom is None:
                    first_dicom = (sid, files_[0]["Name"])
                if label == "NIFTI":
                    for f in files_:
                        if f["Name"].endswith((".nii", ".nii.gz")):
                            nifti_rows.append((sid, f["Name"], f.get("URI", ""), ()))
        console.print(tree)

        # 4. headers before and after de-identification
        if first_dicom is None:
            raise DemoFailed("no archived DICOM file found")
        sid, name = first_dicom
        r = _check(
            http.get(f"/data/experiments/{exp['ID']}/scans/{sid}/resources/DICOM/files/{name}"),
            "download an archived file",
        )
        tmp = data_dir / "demo-download.dcm"
        tmp.write_bytes(r.content)
        archived_ds = pydicom.dcmread(tmp, stop_before_pixels=True)
        tmp.unlink()
        original = next(
            (
                p
                for p in files
                if (ds := pydicom.dcmread(p, stop_before_pixels=True)).SeriesNumber
                == archived_ds.get("SeriesNumber")
                and ds.InstanceNumber == archived_ds.get("InstanceNumber")
            ),
            files[0],
        )
        original_ds = pydicom.dcmread(original, stop_before_pixels=True)
        table = Table(title=f"scan {sid}, instance {archived_ds.get('InstanceNumber')}: sent vs archived")
        table.add_column("attribute")
        table.add_column("sent (planted PHI)", style="red")
        table.add_column("archived", style="green")
        for keyword, label in SHOWN_TAGS:
            table.add_row(label, _value(original_ds, keyword), _value(archived_ds, keyword))
        method = archived_ds.get((0x0012, 0x0064))
        table.add_row(
            "De-identification Method",
            "",
            "; ".join(str(i.get("CodeMeaning", "")) for i in method.value) if method else "[dim](none)[/]",
        )
        console.print(table)

        # 5. no planted PHI byte anywhere in the archive (DICOM, NIfTI, JSON sidecars)
        checked = 0
        leaks: list[tuple[Path, list[bytes]]] = []
        for path in sorted((server.ctx.archive_root / PROJECT).rglob("*")):
            if not path.is_file():
                continue
            data = path.read_bytes()
            if path.name.endswith(".gz"):
                data = gzip.decompress(data)
            found = find_leaks(data, tokens)
            checked += 1
            if found:
                leaks.append((path, found))
        if leaks:
            for path, found in leaks[:5]:
                console.print(
                    f"[red]PHI found in {path.relative_to(data_dir)}: {len(found)} planted value(s)[/]"
                )
            raise DemoFailed(f"planted PHI reached the archive in {len(leaks)} file(s)")
        if checked == 0:
            raise DemoFailed("the archive is empty")
        console.print(
            f"[green]✓ no planted PHI byte in any of the {checked} archived files[/] "
            f"({len(tokens)} planted values searched, NIfTI decompressed)"
        )

        # 6. the NIfTI files
        with server.ctx.session() as db:
            from sqlalchemy import select

            from flip_imaging.archive.models import Experiment, Resource, Scan
            from flip_imaging.archive.store import resource_dir

            rows = db.execute(
                select(Scan.scan_id, Resource)
                .join(Resource, Resource.scan_pk == Scan.pk)
                .join(Experiment, Experiment.pk == Scan.experiment_pk)
                .where(Experiment.id == exp["ID"], Resource.label == "NIFTI")
            ).all()
            folders = {scan_id: resource_dir(server.ctx.archive_root, res) for scan_id, res in rows}
        nifti = Table(title="NIfTI (dcm2niix)")
        for col in ("scan", "file", "shape (voxels)", "voxel size (mm)"):
            nifti.add_column(col)
        if len(folders) != len(scans):
            raise DemoFailed(f"{len(scans)} scans but {len(folders)} NIFTI resources")
        paths = []
        for sid, name, _uri, _ in nifti_rows:
            path = folders[sid] / name
            shape = nifti_shape(path)
            spacing = " x ".join(f"{z:g}" for z in nifti_zooms(path)[: len(shape)])
            nifti.add_row(sid, name, " x ".join(str(d) for d in shape), spacing)
            paths.append(path)
        console.print(nifti)
        for path in paths:
            console.print(f"  {path}", soft_wrap=True)
        statuses = ", ".join(f"scan {s['scan']}: {s['status']}" for s in state["scans"])
        console.print(f"conversion: {statuses}")

        console.rule("[bold green]demo complete")
        console.print(f"Browse: {server.url}/data/projects/{PROJECT}/experiments?format=json")
        console.print(
            f"Log in as [bold]admin[/] with the password in {server.password_file} (readable only by you)",
            soft_wrap=True,
        )
        console.print(f"API docs: {server.url}/xapi/docs   data directory: {data_dir}")
        if keep_running:
            console.print("Server kept running; press Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        server.stop()


def demo_command(
    data_dir: Path = typer.Option(
        None, "--data-dir", help="Fresh (empty) data directory; default a new temp dir"
    ),
    keep_running: bool = typer.Option(False, "--keep-running", help="Leave the server up for browsing"),
    port: int = typer.Option(0, "--port", help="HTTP port (default: a free one)"),
    dicom_port: int = typer.Option(0, "--dicom-port", help="DICOM port (default: a free one)"),
    timeout: float = typer.Option(300, "--timeout", help="Seconds to wait for each step"),
) -> None:
    """Run the whole path on generated data: C-STORE with PHI → de-identified archive → NIfTI."""
    created = data_dir is None
    target = Path(tempfile.mkdtemp(prefix="flip-demo-")) if created else data_dir
    try:
        code = run_demo(target.resolve(), keep_running, port, dicom_port, timeout)
    except DemoFailed as exc:
        # soft_wrap: a message (with its paths) stays on one line whatever the terminal's width
        console.print(f"[bold red]demo failed:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from exc
    except Exception as exc:  # any other failure is a failed demo, with its reason
        console.print(f"[bold red]demo failed:[/] {type(exc).__name__}: {exc}", soft_wrap=True)
        raise typer.Exit(1) from exc
    if created and not keep_running:
        console.print(f"(the data directory {target} is kept for inspection; delete it when done)")
    if code:
        raise typer.Exit(code)


__all__ = ["demo_command", "run_demo"]
