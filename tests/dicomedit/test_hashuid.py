"""hashUID must be byte-identical to XNAT's so UIDs de-identify the same way everywhere."""

from __future__ import annotations

import re

import pydicom
import pytest
from pydicom.dataset import Dataset

from flip_imaging.dicomedit import Script, hash_uid, new_uid


@pytest.mark.parametrize(
    ("uid", "expected"),
    [
        ("1.2.3", "2.25.148370922854076938159295778886134140470"),
        ("1.2.840.113619.2.1.1.322987881.621.736169244.449", "2.25.50852953966634149740942778390731249891"),
        ("", "2.25.290070988920337595058960832122557831312"),
    ],
)
def test_hash_uid_vectors(uid: str, expected: str) -> None:
    assert hash_uid(uid) == expected


def test_hash_uid_is_a_valid_uid() -> None:
    for i in range(200):
        h = hash_uid(f"1.2.826.0.1.{i}")
        assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", h)
        assert len(h) <= 64
    assert hash_uid("1.2.3") != hash_uid("1.2.4")


def test_hash_uid_function_in_script_matches() -> None:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    Script.parse('version "6.6"\n(0020,000D) := hashUID[(0020,000D)]').apply(ds)
    assert ds.StudyInstanceUID == "2.25.148370922854076938159295778886134140470"


def test_hash_uid_list_hashes_every_value_in_place() -> None:
    ds = Dataset()
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedImageSequence = pydicom.Sequence([item])
    Script.parse('version "6.6"\nhashUIDList["*/(0008,1155)"]').apply(ds)
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == hash_uid("1.2.3")


def test_new_uid_prefix_and_length() -> None:
    assert new_uid().startswith("2.25.")
    u = new_uid("1.2.9")
    assert u.startswith("1.2.9.") and len(u) <= 64
    assert new_uid("1.2.9") != u
    long_prefix = "1." + ".".join(["12345"] * 9)
    assert len(new_uid(long_prefix)) <= 64
