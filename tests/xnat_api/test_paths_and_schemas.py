"""URL parsing and the XSD documents xnatpy builds its classes from (no server needed)."""

from __future__ import annotations

import io
import logging
from importlib import resources

import pytest
from xnat import StringLoader
from xnat.convert_xsd import SchemaParser

from flip_imaging.xnat_api.paths import BadPath, parse


def test_parse_chains() -> None:
    p = parse("projects/P/subjects/S/experiments/E/scans/1,2/resources/DICOM/files/a/b.dcm".split("/"))
    assert p.chain == [
        ("project", "P"),
        ("subject", "S"),
        ("experiment", "E"),
        ("scan", "1,2"),
        ("resource", "DICOM"),
    ]
    assert (p.tail, p.arg) == ("files", "a/b.dcm")
    p = parse("experiments/E/assessors/A/out/resources/SEG/files".split("/"))
    assert p.chain[-1] == ("resource", "SEG") and p.tail == "files" and p.arg is None
    assert parse(["projects"]).tail == "projects"
    p = parse("projects/P/prearchive_code/4".split("/"))
    assert (p.tail, p.arg) == ("prearchive_code", "4")
    for bad in (
        "projects/P/nope",
        "projects/P/scans/1",
        "experiments/E/subjects/S",
        "projects/P/prearchive_code/4/x",
    ):
        with pytest.raises(BadPath):
            parse(bad.split("/"))


def test_xnatpy_builds_classes_from_our_schemas() -> None:
    logger = logging.getLogger("xsd")
    logger.verbose = logger.debug  # type: ignore[attr-defined]
    parser = SchemaParser(logger=logger)
    for name in ("xdat", "xnat"):
        text = resources.files("flip_imaging.xnat_api").joinpath("schemas", f"{name}.xsd").read_text()
        assert parser.parse_schema_xmlstring(text, name)
    assert parser.unknown_tags == set()
    out = io.StringIO()
    parser.write(out)
    code = out.getvalue()
    loader = StringLoader(code)
    import importlib.util

    spec = importlib.util.spec_from_loader("xnat.generated.schema_test", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    for cls in parser.class_list.values():
        getattr(module, cls.writer.python_name).__register__(module.XNAT_CLASS_LOOKUP)
    lookup = module.XNAT_CLASS_LOOKUP
    for xsi in (
        "xnat:projectData",
        "xnat:subjectData",
        "xnat:experimentData",
        "xnat:imageSessionData",
        "xnat:mrSessionData",
        "xnat:ctSessionData",
        "xnat:petSessionData",
        "xnat:imageScanData",
        "xnat:mrScanData",
        "xnat:ctScanData",
        "xnat:abstractResource",
        "xnat:resourceCatalog",
        "xnat:fileData",
        "xnat:reconstructedImageData",
        "xnat:imageAssessorData",
    ):
        assert xsi in lookup, xsi
    mr = lookup["xnat:mrSessionData"]
    for attr in ("scans", "assessors", "resources", "subject_id", "date", "label", "project"):
        assert hasattr(mr, attr), attr
    assert lookup["xnat:mrScanData"]._CONTAINED_IN == "scans"
    assert lookup["xnat:resourceCatalog"]._CONTAINED_IN == "resources"
