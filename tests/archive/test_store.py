"""ArchiveWriter: catalog and files change together; crashes at any step leave a consistent archive."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from flip_imaging.archive.models import ArchiveTxn, Experiment, File, Project
from flip_imaging.archive.store import (
    JOURNAL,
    STAGING,
    ArchiveWriter,
    UnsafePathError,
    file_path,
    recover,
    safe_relpath,
)
from flip_imaging.events.models import Event


def _project(ctx, pid: str = "P1") -> None:
    with ctx.session() as db:
        db.add(Project(id=pid, name=f"{pid} name"))


def _scan_resource(w: ArchiveWriter):
    project = w.project("P1")
    subject, _ = w.ensure_subject(project, "S1")
    exp, _ = w.ensure_experiment(project, subject, "ACC1", xsi_type="xnat:ctSessionData", modality="CT")
    scan, _ = w.ensure_scan(exp, "2", xsi_type="xnat:ctScanData", type="AXIAL")
    res, _ = w.ensure_resource(scan, "DICOM", format="DICOM")
    return exp, scan, res


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_commit_writes_files_rows_and_event(ctx) -> None:
    _project(ctx)
    with ArchiveWriter(ctx) as w:
        exp, scan, res = _scan_resource(w)
        f = w.add_file(res, "a/1.dcm", b"hello")
        w.add_file(res, "2.dcm", io.BytesIO(b"x" * 3_000_000))
        w.publish("ScanEvent", "CREATED", {"id": scan.scan_id}, project_id="P1")
    assert exp.id == "XNAT_E00001"
    path = file_path(ctx.archive_root, res, f)
    assert path == ctx.archive_root / "P1/arc001/ACC1/SCANS/2/DICOM/a/1.dcm"
    assert path.read_bytes() == b"hello"
    with ctx.session() as db:
        rows = {r.path: r for r in db.scalars(select(File))}
        assert rows["a/1.dcm"].sha256 == hashlib.sha256(b"hello").hexdigest()
        assert rows["2.dcm"].size == 3_000_000
        assert db.scalar(select(func.count()).select_from(Event)) == 1
        assert db.scalar(select(func.count()).select_from(ArchiveTxn)) == 0
    assert not list((ctx.archive_root / STAGING).iterdir())
    assert not list((ctx.archive_root / JOURNAL).iterdir())


def test_error_inside_block_leaves_nothing(ctx) -> None:
    _project(ctx)
    with pytest.raises(RuntimeError):
        with ArchiveWriter(ctx) as w:
            _, _, res = _scan_resource(w)
            w.add_file(res, "1.dcm", b"data")
            w.publish("ScanEvent", "CREATED", {}, project_id="P1")
            raise RuntimeError("boom")
    assert _all_files(ctx.archive_root) == []
    with ctx.session() as db:
        assert db.scalar(select(func.count()).select_from(Experiment)) == 0
        assert db.scalar(select(func.count()).select_from(Event)) == 0


def test_duplicate_and_overwrite(ctx) -> None:
    _project(ctx)
    with ArchiveWriter(ctx) as w:
        _, _, res = _scan_resource(w)
        w.add_file(res, "1.dcm", b"v1")
    with ArchiveWriter(ctx) as w:
        _, _, res = _scan_resource(w)
        with pytest.raises(FileExistsError):
            w.add_file(res, "1.dcm", b"v2")
        f = w.add_file(res, "1.dcm", b"v2", overwrite=True)
    assert file_path(ctx.archive_root, res, f).read_bytes() == b"v2"
    assert [p.name for p in _all_files(ctx.archive_root)] == ["1.dcm"]


def test_stream_over_limit_stages_nothing(ctx) -> None:
    _project(ctx)
    with pytest.raises(ValueError, match="limit"):
        with ArchiveWriter(ctx) as w:
            _, _, res = _scan_resource(w)
            w.add_file(res, "big.bin", io.BytesIO(b"x" * 5000), max_bytes=4096)
    assert _all_files(ctx.archive_root) == []


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", "", "a\\b", "a\x00b", ".."])
def test_unsafe_paths_refused(bad: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relpath(bad)


def test_delete_removes_files_after_commit(ctx) -> None:
    _project(ctx)
    with ArchiveWriter(ctx) as w:
        exp, _, res = _scan_resource(w)
        w.add_file(res, "1.dcm", b"v1")
    with ArchiveWriter(ctx) as w:
        w.delete(w.db.get(Experiment, exp.pk))
    assert _all_files(ctx.archive_root) == []
    with ctx.session() as db:
        assert db.scalar(select(func.count()).select_from(File)) == 0


def _crash_after_moves(ctx, monkeypatch, *, commit: bool) -> None:
    """Simulate a process dying after files were renamed into place, before/after the DB commit."""
    w = ArchiveWriter(ctx).__enter__()
    _, _, res = _scan_resource(w)
    w.add_file(res, "1.dcm", b"new")
    original_commit = w.db.commit

    def dying_commit() -> None:
        if commit:
            original_commit()
        raise SystemExit("killed")  # nothing after this runs in a real crash

    monkeypatch.setattr(w.db, "commit", dying_commit)
    monkeypatch.setattr(w, "_abort", lambda: None)  # a killed process cleans nothing up
    with pytest.raises(SystemExit):
        w._commit()
    w.db.close()
    monkeypatch.undo()


def test_recover_rolls_back_uncommitted(ctx, monkeypatch) -> None:
    _project(ctx)
    _crash_after_moves(ctx, monkeypatch, commit=False)
    journals = list((ctx.archive_root / JOURNAL).glob("*.json"))
    assert len(journals) == 1 and json.loads(journals[0].read_text())["moves"]
    assert len(_all_files(ctx.archive_root)) == 2  # the moved file and the journal
    assert recover(ctx) == 1
    assert _all_files(ctx.archive_root) == []
    with ctx.session() as db:
        assert db.scalar(select(func.count()).select_from(File)) == 0


def test_recover_keeps_committed(ctx, monkeypatch) -> None:
    _project(ctx)
    _crash_after_moves(ctx, monkeypatch, commit=True)
    assert recover(ctx) == 1
    files = _all_files(ctx.archive_root)
    assert [p.read_bytes() for p in files] == [b"new"]
    with ctx.session() as db:
        assert db.scalar(select(func.count()).select_from(File)) == 1
        assert db.scalar(select(func.count()).select_from(ArchiveTxn)) == 0


def test_relabelled_folder_is_never_shared(ctx) -> None:
    """A new experiment given an old experiment's former label gets its own folder."""
    _project(ctx)
    with ArchiveWriter(ctx) as w:
        exp, _, res1 = _scan_resource(w)
        w.add_file(res1, "1.dcm", b"first")
    with ArchiveWriter(ctx) as w:
        w.db.get(Experiment, exp.pk).label = "RENAMED"
    with ArchiveWriter(ctx) as w:
        _, _, res2 = _scan_resource(w)  # label ACC1 again
        w.add_file(res2, "1.dcm", b"second")
    assert res1.path != res2.path
    with ArchiveWriter(ctx) as w:
        w.delete(w.db.get(Experiment, exp.pk))
    assert [p.read_bytes() for p in _all_files(ctx.archive_root)] == [b"second"]


def test_known_digest_moves_without_reading_and_bulk_rows(ctx, tmp_path: Path) -> None:
    """The DICOM intake hands over files it hashed itself: moved in, fsynced at commit, rows in bulk."""
    _project(ctx)
    sources = []
    for i in range(5):
        src = ctx.archive_root.parent / f"deid-{i}.dcm"  # same file system as the archive
        src.write_bytes(f"instance {i}".encode() * 100)
        sources.append(src)
    with ArchiveWriter(ctx) as w:
        _exp, _scan, res = _scan_resource(w)
        for i, src in enumerate(sources):
            data = src.read_bytes()
            known = (len(data), hashlib.sha256(data).hexdigest())
            row = w.add_file(res, f"{i}.dcm", src, move=True, known=known, flush=False)
            assert row.pk is None  # not flushed yet
        with pytest.raises(FileExistsError):  # duplicates are seen before any flush
            w.add_file(res, "3.dcm", b"again", flush=False)
    assert not any(src.exists() for src in sources)  # moved, not copied
    with ctx.session() as db:
        rows = {r.path: r for r in db.scalars(select(File))}
    assert sorted(rows) == [f"{i}.dcm" for i in range(5)]
    for i in range(5):
        on_disk = file_path(ctx.archive_root, res, rows[f"{i}.dcm"]).read_bytes()
        assert on_disk == f"instance {i}".encode() * 100
        assert rows[f"{i}.dcm"].sha256 == hashlib.sha256(on_disk).hexdigest()
    assert _all_files(ctx.archive_root / STAGING) == []


def test_file_cache_follows_deletions_in_one_transaction(ctx) -> None:
    _project(ctx)
    with ArchiveWriter(ctx) as w:
        _exp, _scan, res = _scan_resource(w)
        w.add_file(res, "1.dcm", b"one")
    with ArchiveWriter(ctx) as w:
        _exp, _scan, res = _scan_resource(w)
        with pytest.raises(FileExistsError):
            w.add_file(res, "1.dcm", b"dup")
        existing = w.db.scalar(select(File).where(File.path == "1.dcm"))
        w.delete_file(existing)
        w.add_file(res, "1.dcm", b"new")  # allowed once the old row is gone
    with ctx.session() as db:
        row = db.scalar(select(File).where(File.path == "1.dcm"))
        assert row.sha256 == hashlib.sha256(b"new").hexdigest()
    assert file_path(ctx.archive_root, res, row).read_bytes() == b"new"
