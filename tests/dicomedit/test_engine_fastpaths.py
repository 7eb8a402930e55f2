"""The engine's fast paths give exactly what the plain, statement-by-statement evaluation gives.

Covered: batched runs of delete statements (one pass instead of one walk per statement), the per-apply
tree index (sorted tags and sequence items cached, invalidated by edits), reading values straight
from unconverted elements, and DS/IS values surviving a read into a variable and a write back.
"""

from __future__ import annotations

import io
import random

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from flip_imaging.dicomedit import Script
from flip_imaging.dicomedit.values import read_string


def _item(depth: int, rng: random.Random) -> Dataset:
    ds = Dataset()
    ds.AccessionNumber = f"ACC{depth}"
    ds.StudyDate = "20240101"
    ds.ReferencedSOPInstanceUID = f"1.2.{depth}.{rng.randrange(1000)}"
    ds.CodeValue = "113100"
    ds.PatientName = "Nested^Name"
    ds.add_new(0x00400275 if depth % 2 else 0x00081110, "SQ", Sequence([]))
    if depth < 3:
        seq = ds[0x00400275 if depth % 2 else 0x00081110].value
        for _ in range(2):
            seq.append(_item(depth + 1, rng))
    block = ds.private_block(0x0011, "ACME", create=True)
    block.add_new(0x01, "LO", "private nested")
    return ds


def rich_dataset(seed: int = 7) -> Dataset:
    """A dataset read back from bytes (so elements start raw) with nesting, privates and wildcards."""
    rng = random.Random(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN1"
    ds.PatientBirthDate = "19700101"
    ds.OtherPatientIDs = "X1\\X2"
    ds.PatientSex = "F"
    ds.PatientAge = "054Y"
    ds.StudyDate = "20240315"
    ds.SeriesDate = "20240315"
    ds.AccessionNumber = "TOP"
    ds.InstitutionName = "General Hospital"
    ds.StudyDescription = "Head CT"
    ds.SliceThickness = "1.68"
    ds.SeriesNumber = "3"
    ds.add_new(0x00321032, "PN", "Req^Phys")
    ds.add_new(0x00380010, "LO", "ADM1")
    ds.ReferencedImageSequence = Sequence([_item(1, rng), _item(2, rng)])
    ds.RequestAttributesSequence = Sequence([_item(1, rng)])
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0A, "US", 4)
    block.add_new(0x0B, "LO", "drop me")
    other = ds.private_block(0x0029, "ACME", create=True)
    other.add_new(0x10, "SQ", Sequence([_item(2, rng)]))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def encoded(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


DELETES = [
    "-(0010,0010)", "-(0010,0020)", "-(0010,10XX)", "-(0010,XXXX)", "-(0008,00XX)", "-(0008,1140)",
    "-(0040,0275)", "-(0032,XXXX)", "-(0038,XXXX)", "-(0008,0050)", "-(0008,1030)", "-(0018,0050)",
    "-+/(0008,0050)", "-+/(0008,00XX)", "-+/(0010,XXXX)", "-+/(0008,1110)", "-+/(0040,0275)",
    "-+/(0008,0100)", "-*/(0008,0020)", "-*/(0010,0010)", "-*/(0008,1155)", "-+/(0011,{ACME}XX)",
    "-+/(00X8,0X2X)", "-+/(0#08,01@@)", "-(0008,1140)[0]/(0008,0050)", "-(0008,1140)[%]/(0008,0020)",
    "-./(0008,0050)", "-(0019,{SIEMENS MR HEADER}0B)", "-(0029,{ACME}XX)", "-*/(0011,{ACME}01)",
    "-(0008,1140)[1]", "-(0040,0275)[%]/(0008,1110)[0]/(0008,0050)", "-(0019,{SIEMENS MR HEADER}XX)",
]


@pytest.mark.parametrize("seed", range(12))
def test_batched_deletes_equal_one_statement_at_a_time(seed: int) -> None:
    rng = random.Random(seed)
    stmts = rng.sample(DELETES, rng.randrange(3, len(DELETES)))
    batched = 'version "6.6"\n' + "\n".join(stmts) + "\n"
    # a variable assignment between deletes prevents batching: the reference evaluation
    one_by_one = 'version "6.6"\n' + "\n".join(f"{s}\nbarrier := \"{i}\"" for i, s in enumerate(stmts)) + "\n"
    a, b = rich_dataset(seed), rich_dataset(seed)
    Script.parse(batched).apply(a)
    Script.parse(one_by_one).apply(b)
    assert encoded(a) == encoded(b), stmts


def test_nested_paths_see_items_added_after_the_index_was_filled() -> None:
    ds = rich_dataset()
    Script.parse("""version "6.6"
x1 := isPresent[+/(0008,0051)]
(0012,0064)[1]/(0008,0100) := "113107"
x2 := isPresent[+/(0008,0051)]
(0012,0064)[2]/(0008,0050) := "ACC-ITEM-2"
-+/(0008,0050)
""").apply(ds)
    items = ds[0x00120064].value
    assert len(items) == 3 and items[1].CodeValue == "113107"
    assert 0x00080050 not in items[2]


def test_wildcards_see_elements_added_after_the_index_was_filled() -> None:
    ds = rich_dataset()
    result = Script.parse("""version "6.6"
x1 := isPresent[(0012,00XX)]
(0012,0062) := "YES"
-(0012,00XX)
gone := (0012,0062)
(0012,0064)[0]/(0008,0100) := "113100"
-(0012,00XX)
""").apply(ds)
    assert 0x00120062 not in ds and 0x00120064 not in ds
    assert result.variables["gone"] is None


@pytest.mark.parametrize(
    ("deletes", "left"),
    # 13 = 7 + 3 items of Referenced Image Sequence + 3 of the private sequence; 7 = what is left of
    # those 13 when nested (0040,0275) sequences go too
    [("-(0040,0275)", 13), ("-(0040,0275)\n-(0008,0051)", 13), ("-+/(0040,0275)\n-(0040,0275)", 7),
     ("-(0008,1140)[0]", 13)],
)
def test_deleted_sequences_are_not_walked_any_more(deletes: str, left: int) -> None:
    ds = rich_dataset()
    result = Script.parse(f"""version "6.6"
before := collectValues[+/(0008,0050)]
{deletes}
vals := collectValues[+/(0008,0050)]
""").apply(ds)
    assert len(result.variables["before"]) == 20  # type: ignore[arg-type]
    assert len(result.variables["vals"]) == left  # type: ignore[arg-type]


def test_deletes_batched_inside_if_blocks() -> None:
    ds = rich_dataset()
    Script.parse("""version "6.6"
if (isPresent[(0010,0010)]) {
  -+/(0008,0050)
  -(0008,00XX)
  -*/(0008,1155)
} else {
  -(0010,0010)
  -(0010,0020)
}
""").apply(ds)
    assert 0x00100010 in ds and 0x00080050 not in ds and 0x00080020 not in ds
    assert not any(0x00081155 in it or 0x00080050 in it for it in ds.ReferencedImageSequence)


def test_retain_private_then_nested_paths_use_fresh_items() -> None:
    script = """version "6.6"
x1 := isPresent[+/(0008,0051)]
retainPrivateTags[(0019,{SIEMENS MR HEADER}0A)]
-+/(0008,0050)
vals := collectValues[+/(0008,1155)]
"""
    ds = rich_dataset()
    result = Script.parse(script).apply(ds)
    assert 0x00291010 not in ds  # private sequence gone, its items no longer walked
    assert ds[0x00190010].value == "SIEMENS MR HEADER" and 0x0019100A in ds and 0x0019100B not in ds
    # 7 + 3 + 7 references in the public sequences; the 3 in the removed private one must not count
    assert len(result.variables["vals"]) == 17  # type: ignore[arg-type]


def test_ds_value_read_into_variable_and_written_back_keeps_its_text() -> None:
    ds = rich_dataset()
    script = Script.parse('version "6.6"\nv := (0018,0050)\nn := (0020,0011)\n(0018,0050) := v\n'
                          '(0020,0011) := n\n(0018,0088) := v\n')
    result = script.apply(ds)
    assert result.variables["v"] == "1.68" and result.variables["n"] == "3"
    back = pydicom.dcmread(io.BytesIO(encoded(ds)))
    assert back[0x00180050].value == 1.68 and str(back[0x00180050].value) == "1.68"
    assert back[0x00180088].value == 1.68
    assert back[0x00200011].value == 3
    assert b"'" not in back[0x00180050].value.original_string.encode()


def test_ds_read_after_conversion_has_no_quotes() -> None:
    ds = rich_dataset()
    _ = ds.SliceThickness  # converted to DSfloat by pydicom before the script reads it
    assert read_string(ds, 0x00180050) == "1.68"
    ds.add_new(0x00280030, "DS", ["0.5", "0.75"])
    assert read_string(ds, 0x00280030) == "0.5\\0.75"
    ds.add_new(0x00189087, "FD", 1000.0)
    assert read_string(ds, 0x00189087) == "1000"


@pytest.mark.parametrize(
    ("vr", "raw"),
    [
        ("UI", b"1.2.840.10008.5.1.4.1.1.2\x00"),
        ("UI", b"1.2.3\\4.5.6 "),
        ("UI", b""),
        ("DA", b"20240315"),
        ("DA", b"20240315\\20240316 "),
        ("TM", b"101530.5 "),
        ("DT", b"20240315101530.5+0100"),
        ("CS", b"ORIGINAL\\PRIMARY\\AXIAL "),
        ("CS", b" F  "),
        ("AS", b"054Y"),
        ("LO", b"Head CT \\ Axial  "),
        ("LO", b"SIEMENS MR HEADER\x00"),
        ("SH", b"ACC1\\ACC2 "),
        ("LT", b"free text\\with backslash  "),
        ("ST", b"short text "),
        ("UT", b"unlimited\x00"),
        ("LO", b"\x1b$BDoe"),  # ISO 2022 escape: left to pydicom
        ("LO", "Caf\u00e9".encode("latin-1")),  # not ASCII: left to pydicom
    ],
)
@pytest.mark.filterwarnings("ignore:Found unknown escape sequence")  # the ESC case, no charset set
def test_raw_reads_equal_converted_reads(vr: str, raw: bytes) -> None:
    tag = {"UI": 0x00080018, "DA": 0x00080020, "TM": 0x00080030, "DT": 0x0008002A, "CS": 0x00080008,
           "AS": 0x00101010, "LO": 0x00081030, "SH": 0x00080050, "LT": 0x00104000, "ST": 0x00080081,
           "UT": 0x00189424}[vr]
    a, b = Dataset(), Dataset()
    for ds in (a, b):
        ds._dict[pydicom.tag.BaseTag(tag)] = RawDataElement(  # type: ignore[assignment]
            pydicom.tag.BaseTag(tag), vr, len(raw), raw, 0, False, True, True, False)
    fast = read_string(a, tag)
    if raw.isascii() and b"\x1b" not in raw:
        assert type(a._dict[tag]) is RawDataElement  # not converted by the read
    _ = b[tag].value  # force pydicom's conversion, then read the converted element
    assert fast == read_string(b, tag)
