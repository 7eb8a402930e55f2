"""The synthetic DICOM generator: streaming, deterministic, convertible, and really full of PHI."""

from __future__ import annotations

import gc
import io
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from pydicom import dcmread

from flip_imaging.synthetic import (
    DEFAULT_STUDY,
    Category,
    PlantedPHI,
    SeriesSpec,
    find_leaks,
    make_ct_series,
    make_mr_series,
    make_series,
    make_study,
    write_series,
)


def _bytes(ds) -> bytes:
    bio = io.BytesIO()
    ds.save_as(bio, enforce_file_format=True)
    return bio.getvalue()


def test_series_is_lazy_and_memory_stays_flat() -> None:
    """300 x 512 x 512 is never materialised: what stays allocated does not grow with the slices."""
    gen = make_ct_series(300, 512, 512, phi=PlantedPHI("QS"))
    slice_bytes = 512 * 512 * 2
    tracemalloc.start()
    retained = []
    for _ in range(40):
        ds = next(gen)
        assert len(ds.PixelData) == slice_bytes
        del ds
        gc.collect()  # pydicom datasets hold reference cycles; collect so the measure is exact
        retained.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    assert max(retained) < 6 * slice_bytes  # the phantom grid (2 float32 planes) and little else
    assert retained[-1] < retained[4] + slice_bytes // 4  # flat, not growing


def test_deterministic_and_distinct_between_patients() -> None:
    a1 = [_bytes(ds) for ds in make_study(PlantedPHI("QA"))]
    a2 = [_bytes(ds) for ds in make_study(PlantedPHI("QA"))]
    b = [_bytes(ds) for ds in make_study(PlantedPHI("QB"))]
    assert a1 == a2
    assert all(x != y for x, y in zip(a1, b, strict=True))
    assert find_leaks(b"".join(b), PlantedPHI("QA").search_tokens()) == []
    pa, pb = PlantedPHI("QA"), PlantedPHI("QB")
    list(make_study(pa))
    list(make_study(pb))
    assert pa.study_date != pb.study_date
    assert not set(pa.search_tokens()) & set(pb.search_tokens())


def test_geometry_and_uids_consistent_within_series() -> None:
    phi = PlantedPHI("QG")
    series = list(make_mr_series(6, 32, 40, phi=phi))
    zs = [float(ds.ImagePositionPatient[2]) for ds in series]
    assert zs == sorted(zs) and len(set(zs)) == 6
    assert len({ds.SeriesInstanceUID for ds in series}) == 1
    assert len({ds.FrameOfReferenceUID for ds in series}) == 1
    assert len({ds.SOPInstanceUID for ds in series}) == 6
    assert len({bytes(ds.PixelData) for ds in series}) == 6
    for ds in series:
        assert (ds.Rows, ds.Columns) == (32, 40)
        assert len(ds.PixelData) == 32 * 40 * 2
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "MR" and ds.SpecificCharacterSet == "ISO_IR 192"


def test_study_has_several_series_one_study_uid() -> None:
    study = list(make_study(PlantedPHI("QT")))
    assert len(study) == sum(s.n for s in DEFAULT_STUDY)
    assert len({ds.StudyInstanceUID for ds in study}) == 1
    assert len({ds.SeriesInstanceUID for ds in study}) == len(DEFAULT_STUDY)
    assert {ds.Modality for ds in study} == {"CT", "MR"}
    assert {ds.SpecificCharacterSet for ds in study} == {"ISO_IR 100", "ISO_IR 192"}
    with pytest.raises(ValueError):
        list(make_study(PlantedPHI("QT"), [SeriesSpec(number=1), SeriesSpec(number=1)]))


def test_phi_planted_everywhere_promised() -> None:
    phi = PlantedPHI("QP")
    study = list(make_study(phi))
    ds = study[-1]
    # nested three deep
    deep = ds.ReferencedStudySequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert phi.token_prefix in str(deep.PersonName)
    assert deep.ReferencedSOPInstanceUID.startswith(phi.uid_root)
    # multi-valued
    assert len(ds.OtherPatientIDs) == 3 and all(phi.token_prefix in v for v in ds.OtherPatientIDs)
    # private creators, several
    creators = {str(e.value) for e in ds if e.tag.is_private_creator}
    assert {"ACME PHI CORP", "FLIP SYNTH PRIVATE", "ACME SEQ", "SIEMENS MR HEADER"} <= creators
    # non-ASCII in both character sets, and the bytes really use that encoding
    latin = _bytes(study[0])
    utf8 = _bytes(next(d for d in study if d.SpecificCharacterSet == "ISO_IR 192"))
    assert "Müller".encode("latin-1") in latin and "Müller".encode() not in latin
    assert "Müller".encode() in utf8
    assert "大野".encode() in utf8
    categories = {v.category for v in phi.values}
    assert categories == set(Category)


def test_search_tokens_cover_components_and_encodings() -> None:
    phi = PlantedPHI("QC")
    name = phi.person("patient_name", "Müller", "Zoë")
    multi = phi.multi("ids", 3)
    tokens = set(phi.search_tokens())
    family, given = name.split("^")
    for piece in (name, family, given):
        assert piece.encode("latin-1") in tokens and piece.encode("utf-8") in tokens
    assert all(v.encode() in tokens for v in multi)
    assert find_leaks(b"xx" + given.encode("utf-8") + b"yy", list(tokens)) != []
    assert find_leaks(b"nothing planted here", list(tokens)) == []


def test_ct_values_are_hounsfield() -> None:
    ds = next(make_ct_series(1, 64, 64, phi=PlantedPHI("QH")))
    import numpy as np

    stored = np.frombuffer(ds.PixelData, dtype="<u2").reshape(64, 64)
    hu = stored.astype(int) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    assert hu.min() <= -990 and hu.max() >= 990  # air and bone present


def test_write_series_and_dcm2niix_converts(tmp_path: Path) -> None:
    spec = SeriesSpec("CT", 8, 48, 48, 1, "CT CHEST")
    paths = write_series(tmp_path / "dcm", make_series(spec, PlantedPHI("QN")))
    assert len(paths) == 8
    back = dcmread(paths[3])
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))
    if not Path(exe).exists():
        pytest.skip("dcm2niix not installed")
    out = tmp_path / "nii"
    out.mkdir()
    proc = subprocess.run([exe, "-z", "n", "-f", "vol", "-o", str(out), str(tmp_path / "dcm")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nii = list(out.glob("vol*.nii"))
    assert len(nii) == 1
    import nibabel

    img = nibabel.load(str(nii[0]))
    assert img.shape == (48, 48, 8)
    assert abs(img.header.get_zooms()[2] - 2.5) < 1e-3
