"""Synthetic DICOM with planted PHI, for de-identification tests, benchmarks and the demo.

Usage::

    phi = PlantedPHI("QA")
    for ds in make_study(phi):          # streams one instance at a time
        ...
    tokens = phi.search_tokens()        # every byte string that must not survive de-identification
"""

from flip_imaging.synthetic.phi import UID_ROOT, Category, PlantedPHI, PlantedValue, find_leaks
from flip_imaging.synthetic.series import (
    DEFAULT_STUDY,
    SAFE_PRIVATE,
    SeriesSpec,
    frame_of_reference_uid,
    make_ct_series,
    make_mr_series,
    make_series,
    make_study,
    series_instance_uid,
    sop_instance_uid,
    write_series,
)

__all__ = [
    "DEFAULT_STUDY",
    "SAFE_PRIVATE",
    "UID_ROOT",
    "Category",
    "PlantedPHI",
    "PlantedValue",
    "SeriesSpec",
    "find_leaks",
    "frame_of_reference_uid",
    "make_ct_series",
    "make_mr_series",
    "make_series",
    "make_study",
    "series_instance_uid",
    "sop_instance_uid",
    "write_series",
]
