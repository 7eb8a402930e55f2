"""The Jayway-style payload filter used by subscriptions."""

from __future__ import annotations

import pytest

from flip_imaging.events.jsonpath import FilterSyntaxError, compile_predicate, matches

PAYLOAD = {"id": "3", "label": "3", "xsiType": "xnat:mrScanData", "integer-id": 12, "scan-type": "T1w",
           "project-id": "P1", "modality": "MR", "series-description": "t1_mprage_sag",
           "frames": 176, "quality": None, "tags": ["a", "b"], "resources": [{"label": "DICOM"}]}


@pytest.mark.parametrize("flt,expected", [
    ("@.modality == 'MR'", True),
    ('@.modality == "CT"', False),
    ("@.modality != 'CT'", True),
    ("@['scan-type'] == 'T1w'", True),
    ("@.scan-type == 'T1w'", True),
    ("@.series-description =~ /.*mprage.*/i", True),
    ("@.series-description =~ /mprage/", False),  # Jayway matches the whole string
    ("@.frames > 100 && @.frames <= 176", True),
    ("@.frames < 100 || @.modality == 'MR'", True),
    ("!(@.modality == 'MR')", False),
    ("@.integer-id == 12.0", True),
    ("@.integer-id == '12'", False),
    ("@.modality in ['CT', 'MR']", True),
    ("@.modality nin ['CT', 'PT']", True),
    ("@.tags contains 'b'", True),
    ("@.tags size 2", True),
    ("@.tags empty false", True),
    ("@.tags subsetof ['a', 'b', 'c']", True),
    ("@.tags anyof ['x', 'a']", True),
    ("@.tags noneof ['x', 'a']", False),
    ("@.resources[0].label == 'DICOM'", True),
    ("@.resources[5].label == 'DICOM'", False),
    ("@.quality == null", True),
    ("@.missing", False),
    ("@.modality", True),
    ("@.missing == 'x'", False),
    ("@.missing != 'x'", True),
    ("$[?(@.modality == 'MR')]", True),
    ("$.modality == 'MR'", True),
])
def test_predicates(flt: str, expected: bool) -> None:
    assert matches(flt, PAYLOAD) is expected


@pytest.mark.parametrize("flt", [
    "", "   ", "@.modality ==", "@.modality = 'MR'", "@.a == 'x", "(@.a == 1", "@.a == 1)",
    "@.a =~ abc", "@.a =~ /(/", "@.a =~ /x/q", "'MR'", "@.a in [@.b]", "@[true] == 1", "@. == 1",
    "@.a == 1 &&", "@.a ?? 1",
])
def test_bad_filters_are_refused(flt: str) -> None:
    with pytest.raises(FilterSyntaxError):
        compile_predicate(flt)


def test_no_filter_matches_everything() -> None:
    assert matches(None, PAYLOAD) and matches("", {})
