"""DicomEdit 6 language semantics, one construct per test, on small synthetic datasets."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from flip_imaging.dicomedit import ApplyResult, DicomEditRuntimeError, DicomEditSyntaxError, Script


def make_ds() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN1"
    ds.Modality = "CT"
    ds.StudyDate = "20240315"
    ds.AcquisitionDateTime = "20240315101530.5"
    ds.StudyTime = "101500"
    ds.SeriesNumber = "3"
    ds.InstitutionName = "General Hospital"
    ds.StudyDescription = "Head CT"
    ds.Rows = 4
    refs = []
    for i in range(3):
        r = Dataset()
        r.ReferencedSOPInstanceUID = f"1.2.3.{i}"
        r.AccessionNumber = f"ACC{i}"
        refs.append(r)
    ds.ReferencedImageSequence = Sequence(refs)
    inner = Dataset()
    inner.AccessionNumber = "DEEP"
    mid = Dataset()
    mid.ReferencedStudySequence = Sequence([inner])
    mid.AccessionNumber = "MID"
    ds.RequestAttributesSequence = Sequence([mid])
    ds.AccessionNumber = "TOP"
    block = ds.private_block(0x0009, "ACME", create=True)
    block.add_new(0x10, "LO", "secret")
    block.add_new(0x11, "LO", "other")
    return ds


def run(script: str, ds: Dataset | None = None, **variables: str) -> tuple[Dataset, ApplyResult]:
    ds = ds if ds is not None else make_ds()
    result = Script.parse('version "6.6"\n' + script).apply(ds, variables=variables)
    return ds, result


# ---- parsing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["6.0", "6.1", "6.2", "6.3", "6.4", "6.5", "6.6"])
def test_supported_versions(version: str) -> None:
    assert Script.parse(f'version "{version}"\n').version == version


@pytest.mark.parametrize(
    ("text", "line", "col"),
    [
        ('(0010,0010) := "x"', 1, 1),
        ('version "6.7"\n', 1, 1),
        ('version "5.0"\n', 1, 1),
        ('version "6.6"\n(0019,1008) := "x"', 2, 1),
        ('version "6.6"\nx := "a"', 2, 1),
        ('version "6.6"\n(0008,0080) := uppercase["abc"', 2, 31),
        ('version "6.6"\n(0008,0080) := nosuch["a"]', 2, 16),
        ('version "6.6"\n(0008,0080) := "unterminated', 2, 16),
        ('version "6.6"\nif ((0008,0060) = "CT") {\n(0008,0080) := "a"\n', 4, 1),
    ],
)
def test_syntax_errors_have_position(text: str, line: int, col: int) -> None:
    with pytest.raises(DicomEditSyntaxError) as err:
        Script.parse(text)
    assert (err.value.line, err.value.column) == (line, col)
    assert f"line {line}" in str(err.value)


def test_comments_blank_lines_and_continuation() -> None:
    ds, _ = run('\n// comment\n(0010,0010) := concatenate["a", \\\n   "b"]   // trailing\n\n')
    assert ds.PatientName == "ab"


def test_describe_and_export_are_recorded() -> None:
    s = Script.parse('version "6.6"\ndescribe site "Site name"\ndescribe secret hidden\n'
                     'export site "field"\n')
    assert s.descriptions == {"site": ("Site name", None), "secret": (None, "hidden")}
    assert s.exports == {"site": "field"}


# ---- assignment and deletion ---------------------------------------------------------------------

def test_assign_creates_with_dictionary_vr() -> None:
    ds, _ = run('(0012,0062) := "YES"\n(0020,0013) := 42')
    assert ds["PatientIdentityRemoved"].VR == "CS" and ds.PatientIdentityRemoved == "YES"
    assert ds.InstanceNumber == 42


def test_assign_if_exists() -> None:
    ds, _ = run('(0008,0080) ?= "x"\n(0008,0081) ?= "y"')
    assert ds.InstitutionName == "x" and "InstitutionAddress" not in ds


def test_backslash_makes_multivalue() -> None:
    ds, _ = run('(0008,0008) := "DERIVED\\\\SECONDARY"')
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]


def test_string_escapes_kept_as_written_except_backslash_and_quote() -> None:
    ds, _ = run('(0008,0081) := "say \\"hi\\" \\t"')  # ST: backslash is not a separator
    assert ds.InstitutionAddress == 'say "hi" \\t'


def test_delete_public_and_wildcards() -> None:
    ds, _ = run("-(0010,XXXX)\n-(0008,00@0)")
    assert "PatientName" not in ds and "PatientID" not in ds
    # @ is an even digit: (0008,0060) and (0008,0020) go, (0008,0050) and (0008,0030) stay
    assert "Modality" not in ds and "StudyDate" not in ds
    assert "AccessionNumber" in ds and "StudyTime" in ds and "SOPInstanceUID" in ds


def test_delete_odd_digit_wildcard() -> None:
    ds, _ = run("-(0020,001#)")  # (0020,0011) series number; (0020,0013) absent
    assert "SeriesNumber" not in ds


def test_private_tags_by_creator() -> None:
    ds, _ = run('(0009,{ACME}10) := "changed"\n-(0009,{ACME}11)')
    assert ds[0x00091010].value == "changed"
    assert 0x00091011 not in ds and 0x00090010 in ds


def test_new_private_creator_reserved_and_vr_un() -> None:
    ds, _ = run('(0011,{NEW CREATOR}05) := "v"')
    assert ds[0x00110010].value == "NEW CREATOR"
    assert ds[0x00111005].VR == "UN"


def test_sequence_paths() -> None:
    ds, _ = run('(0008,1140)[1]/(0008,1155) := "9.9"\n-(0008,1140)[%]/(0008,0050)')
    items = ds.ReferencedImageSequence
    assert items[1].ReferencedSOPInstanceUID == "9.9" and items[0].ReferencedSOPInstanceUID == "1.2.3.0"
    assert all("AccessionNumber" not in it for it in items)


def test_level_wildcards() -> None:
    ds, _ = run("-./(0008,0050)")
    assert ds.AccessionNumber == "TOP"
    assert ds.RequestAttributesSequence[0].ReferencedStudySequence[0].AccessionNumber == "DEEP"
    assert "AccessionNumber" not in ds.RequestAttributesSequence[0]
    ds, _ = run("-+/(0008,0050)")
    assert ds.AccessionNumber == "TOP"
    assert "AccessionNumber" not in ds.RequestAttributesSequence[0].ReferencedStudySequence[0]
    ds, _ = run("-*/(0008,0050)")
    assert "AccessionNumber" not in ds


def test_assign_creates_sequence_items() -> None:
    ds, _ = run('(0040,A370)[1]/(0008,0050) := "N"')
    assert len(ds[0x0040A370].value) == 2 and ds[0x0040A370].value[1].AccessionNumber == "N"


def test_assign_to_plural_path_is_runtime_error_keeping_changes() -> None:
    ds = make_ds()
    with pytest.raises(DicomEditRuntimeError) as err:
        run('(0008,0080) := "kept"\n(0008,1140)[%]/(0008,1155) := "x"\n(0008,0081) := "no"', ds)
    assert err.value.line == 3
    assert ds.InstitutionName == "kept" and "InstitutionAddress" not in ds


def test_remove_all_private_and_retain() -> None:
    ds, _ = run("removeAllPrivateTags")
    assert not any(t.group & 1 for t in ds.keys())
    ds, _ = run("retainPrivateTags[(0009,{ACME}10)]")
    assert 0x00091010 in ds and 0x00090010 in ds and 0x00091011 not in ds
    with pytest.raises(DicomEditRuntimeError):
        run("retainPrivateTags[(0010,0010)]")


# ---- variables and conditions --------------------------------------------------------------------

def test_supplied_and_script_variables() -> None:
    ds, res = run('(0010,0010) := subject\nproject := "override"\n(0008,1030) := project', subject="S1",
                  project="P")
    assert ds.PatientName == "S1" and ds.StudyDescription == "override"
    assert res.variables["project"] == "override"


def test_conditions() -> None:
    ds, _ = run(
        '(0008,0060) = "CT" ? (0008,0080) := "eq"\n'
        '(0008,0060) != "CT" ? (0008,0081) := "ne"\n'
        '(0010,0010) ~ "Doe.*" ? (0008,1010) := "full" : (0008,1010) := "nomatch"\n'
        '(0010,0010) ~ "Doe" ? (0008,1040) := "partial"\n'
        '(0010,0010) !~ "X.*" ? (0008,1050) := "notmatch"\n'
        'isPresent[(0010,0020)] ? (0008,1070) := "present"\n'
    )
    assert ds.InstitutionName == "eq" and "InstitutionAddress" not in ds
    assert ds.StationName == "full" and "InstitutionalDepartmentName" not in ds
    assert ds.PerformingPhysicianName == "notmatch" and ds.OperatorsName == "present"


def test_if_elseif_else() -> None:
    script = (
        'if ((0008,0060) = "MR") {\n  (0008,0080) := "mr"\n} elseif ((0008,0060) = "CT") {\n'
        '  (0008,0080) := "ct"\n  if (and[true[], isPresent[(0010,0010)]]) {\n'
        '    (0008,0081) := "nested"\n  }\n'
        '}\nelse {\n  (0008,0080) := "other"\n}'
    )
    ds, _ = run(script)
    assert ds.InstitutionName == "ct" and ds.InstitutionAddress == "nested"


def test_missing_element_in_string_function_is_runtime_error() -> None:
    with pytest.raises(DicomEditRuntimeError):
        run("(0008,0080) := uppercase[(0010,9999)]")


def test_null_value_assignment_is_noop() -> None:
    ds, _ = run('(0020,000D) := hashUID[(0020,000D)]\n(0008,0080) := lookup["t", "k"]\n'
                '(0008,1010) := match["abc", "z(.*)", 1]')
    assert "StudyInstanceUID" not in ds and ds.InstitutionName == "General Hospital"


# ---- functions -----------------------------------------------------------------------------------

def test_string_functions() -> None:
    ds, _ = run(
        '(0008,0080) := uppercase["a b"]\n(0008,0081) := lowercase["A"]\n'
        '(0008,1010) := replace["a^b^c", "^", "_"]\n(0008,1030) := substring["abcdef", 2, 4]\n'
        '(0008,103E) := format["{0}-{1}''s {2,number,integer}", "x", "y", "1234567"]\n'
        '(0008,1040) := match["t1_mprage_1mm", "t1_(\\\\w+)_1mm", 1]\n'
        '(0008,1050) := normalizeString["Müller"]\n'
        '(0008,1070) := valueAt[collectValues[(0008,1140)[%]/(0008,1155)], 2]\n'
    )
    assert ds.InstitutionName == "A B" and ds.InstitutionAddress == "a"
    assert ds.StationName == "a_b_c" and ds.StudyDescription == "cd"
    assert ds.SeriesDescription == "x-ys 1,234,567"
    assert ds.InstitutionalDepartmentName == "mprage"
    assert ds.PerformingPhysicianName == "M_ller"
    assert ds.OperatorsName == "1.2.3.2"


def test_boolean_functions() -> None:
    _, res = run(
        'echo equals["a", "a"]\necho equals[(0008,0060), "CT"]\necho or[false[], true[]]\n'
        'echo and[true[], false[]]\necho ismatch["MR", "M."]\necho ismatch["MRX", "M."]'
    )
    assert res.echo == ["true", "true", "true", "false", "true", "false"]


def test_set_delete_remove_blank() -> None:
    ds, _ = run('set["(0008,0080)", "via-set"]\ndelete["(0010,0020)"]\nremoveTags["(0008,1030)"]\n'
                "blankValues[(0010,0010), (0010,2000)]")
    assert ds.InstitutionName == "via-set" and "PatientID" not in ds and "StudyDescription" not in ds
    assert ds.PatientName == "" and "MedicalAlerts" not in ds


def test_date_shifts_keep_precision() -> None:
    ds, _ = run(
        '(0008,0020) := shiftDateTimeByIncrement[(0008,0020), "-10", "days"]\n'
        '(0008,002A) := shiftDateTimeByIncrement[(0008,002A), "-25", "hours"]\n'
        '(0008,0021) := shiftDateByIncrement["20240301", "-1"]\n'
    )
    assert ds.StudyDate == "20240305" and ds.AcquisitionDateTime == "20240314091530.5"
    assert ds.SeriesDate == "20240229"
    with pytest.raises(DicomEditRuntimeError):
        run('(0008,0030) := shiftDateTimeByIncrement[(0008,0030), "1", "days"]')  # TM is not DA/DT


def test_shift_list_and_sequence() -> None:
    ds = make_ds()
    ds.ReferencedImageSequence[0].ContentDate = "20200101"
    run('shiftDateTimeListByIncrement["(0008,1140)[%]/(0008,0023)", "1", "days"]', ds)
    assert ds.ReferencedImageSequence[0].ContentDate == "20200102"
    run('shiftDateTimeSequenceByIncrement["86400", "(0008,1140)/(0008,0023)"]', ds)
    assert ds.ReferencedImageSequence[0].ContentDate == "20200103"


def test_map_uid_is_stable_within_a_script() -> None:
    s = Script.parse('version "6.6"\n(0020,000E) := mapUID["1.2.3", "1.2.9"]')
    a, b = make_ds(), make_ds()
    s.apply(a)
    s.apply(b)
    assert a.SeriesInstanceUID == b.SeriesInstanceUID and a.SeriesInstanceUID.startswith("1.2.9.")


def test_map_referenced_uids() -> None:
    ds, _ = run('mapReferencedUIDs["1.2.9", "(0008,1140)[%]/(0008,1155)"]')
    uids = [it.ReferencedSOPInstanceUID for it in ds.ReferencedImageSequence]
    assert all(u.startswith("1.2.9.") for u in uids) and len(set(uids)) == 3


def test_new_uid_and_sop_uid_keeps_meta_in_step() -> None:
    ds, _ = run("(0008,0018) := newUID[]")
    assert ds.SOPInstanceUID.startswith("2.25.")
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_lookup_tables() -> None:
    ds = make_ds()
    Script.parse('version "6.6"\n(0010,0020) := lookup["pid", (0010,0020)]').apply(
        ds, lookup_tables={"pid": {"MRN1": "SUBJ-1"}})
    assert ds.PatientID == "SUBJ-1"


def test_reject_stops_and_flags() -> None:
    ds, res = run('(0008,0080) := "before"\nreject[]\n(0008,0081) := "after"')
    assert res.rejected and res.severity == "REJECT"
    assert ds.InstitutionName == "before" and "InstitutionAddress" not in ds
    _, res = run('(0008,0060) = "MR" ? reject[]')
    assert not res.rejected


def test_echo() -> None:
    _, res = run('echo "hello"\necho (0008,0060)\necho')
    assert res.echo == ["hello", "CT", ""]
    assert res.echo_output == "hello\nCT\n\n"


def test_alter_pixels_blanks_rectangle() -> None:
    import numpy as np

    ds = make_ds()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4, 4, 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    ds.PixelData = np.full((4, 4), 7, dtype="<u2").tobytes()
    run('alterPixels["rectangle", "l=1, t=0, r=3, b=2", "solid", "v=0"]', ds)
    arr = np.frombuffer(ds.PixelData, dtype="<u2").reshape(4, 4)
    assert arr[0, 1] == 0 and arr[1, 2] == 0 and arr[0, 0] == 7 and arr[2, 1] == 7


# ---- performance properties ----------------------------------------------------------------------

def test_apply_leaves_untouched_elements_raw(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "x.dcm"
    make_ds().save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    Script.parse('version "6.6"\n(0010,0010) := "A"\n-(0008,0080)').apply(ds)
    assert isinstance(ds._dict[0x00081030], RawDataElement)
    assert isinstance(ds._dict[0x00200011], RawDataElement)


def test_parse_once_apply_many() -> None:
    s = Script.parse('version "6.6"\n(0010,0010) := concatenate[subject, "-", session]')
    for i in range(5):
        ds = make_ds()
        s.apply(ds, variables={"subject": f"S{i}", "session": "E"})
        assert ds.PatientName == f"S{i}-E"
