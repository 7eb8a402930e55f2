"""Property: parsing anything either gives a Script or raises DicomEditSyntaxError, never another error;
and a script that parses fails at run time only with DicomEditRuntimeError."""

from __future__ import annotations

import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from flip_imaging.dicomedit import DicomEditRuntimeError, DicomEditSyntaxError, Script

VALID = [
    'version "6.6"\n(0010,0010) := "A"\n-(0010,0030)\n',
    'version "6.6"\nif ((0008,0060) = "CT") {\n  (0008,0080) := "ct"\n} elseif ((0008,0060) = "MR") {\n'
    '  (0008,0080) := "mr"\n} else {\n  (0008,0080) := "x"\n}\n',
    'version "6.3"\n(0020,000D) := hashUID[(0020,000D)]\n(0008,1140)[%]/(0008,1155) := "1"\n',
    'version "6.6"\nv := concatenate["a", (0010,0020)]\n'
    '(0010,0020) ~ "M.*" ? (0010,0020) := v : -(0010,0020)\n',
    'version "6.6"\n-(0009,{ACME PRIVATE}XX)\n-*/(0008,0050)\n-./(0008,1155)\nremoveAllPrivateTags\n',
    'version "6.6"\n(0008,0080) := format["{0}-{1}", substring["abc", 0, 2], uppercase[(0008,0060)]]\n'
    'echo match["a1", "a(\\\\d)", 1]\nshiftDateTimeSequenceByIncrement["60", "(0008,1140)/(0008,0023)"]\n',
    'version "6.6"\ndescribe site "Site"\nexport site "f"\nset["(0008,0080)", lookup["t", "k"]]\n'
    'blankValues[(0010,0010)]\nretainPrivateTags[(0009,{ACME}10)]\n',
]
ALPHABET = st.sampled_from(list('()[]{},/\\"=!~?:-%*+.@#xX0123456789abcdefABCDEF_ \t\n') +
                           ["version", "if", "else", "elseif", "echo", "hashUID", ":=", "?=", "//", '"6.6"'])


def _dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^J"
    ds.PatientID = "MRN1"
    ds.Modality = "CT"
    ds.StudyInstanceUID = "1.2.3"
    ds.StudyDate = "20240101"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.ContentDate = "20240101"
    ds.ReferencedImageSequence = Sequence([item])
    ds.private_block(0x0009, "ACME", create=True).add_new(0x10, "LO", "v")
    return ds


def _check(text: str) -> None:
    try:
        script = Script.parse(text)
    except DicomEditSyntaxError as e:
        assert e.line >= 0 and e.column >= 0
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            script.apply(_dataset(), variables={"project": "P", "subject": "S", "session": "E"})
        except DicomEditRuntimeError:
            pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_random_text(text: str) -> None:
    _check(text)
    _check('version "6.6"\n' + text)


@settings(max_examples=400, deadline=None)
@given(st.lists(ALPHABET, max_size=60).map("".join))
def test_random_tokens(text: str) -> None:
    _check('version "6.6"\n' + text)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        piece = draw(st.one_of(ALPHABET, st.text(max_size=3)))
        if op == "insert":
            text = text[:pos] + piece + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 5)):]
        elif op == "replace":
            text = text[:pos] + piece + text[pos + len(piece):]
        else:
            end = draw(st.integers(pos, len(text)))
            text = text[:end] + text[pos:end] + text[end:]
    return text


@settings(max_examples=600, deadline=None)
@given(mutated())
def test_mutated_valid_scripts(text: str) -> None:
    _check(text)


def test_valid_seed_scripts_parse() -> None:
    for text in VALID:
        Script.parse(text)
