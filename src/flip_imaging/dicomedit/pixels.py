"""alterPixels: blank a rectangle of burned-in text in native (uncompressed) pixel data.

Only runs when a script calls alterPixels; it edits the PixelData bytes in place via a numpy view,
without decoding through a codec. Compressed transfer syntaxes are refused with a clear error
rather than silently leaving PHI in the image.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from .values import ValueError_


def _params(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError_(f"bad parameter {part.strip()!r} (expected key=value)")
        out[key.strip().lower()] = value.strip()
    return out


def alter_pixels(ds: Dataset, shape: str, shape_params: str, fill: str, fill_params: str) -> None:
    if shape.strip().lower() != "rectangle":
        raise ValueError_(f"unsupported shape {shape!r} (rectangle)")
    if fill.strip().lower() != "solid":
        raise ValueError_(f"unsupported fill {fill!r} (solid)")
    sp = _params(shape_params)
    fp = _params(fill_params)
    try:
        left, top, right, bottom = (int(float(sp[k])) for k in ("l", "t", "r", "b"))
        value = int(float(fp.get("v", "0")))
    except (KeyError, ValueError):
        raise ValueError_("rectangle needs l, t, r, b and solid fill needs v") from None
    if 0x7FE00010 not in ds._dict:
        return
    meta = getattr(ds, "file_meta", None)
    ts = UID(str(getattr(meta, "TransferSyntaxUID", "1.2.840.10008.1.2.1")))
    if ts.is_compressed:
        raise ValueError_("alterPixels needs uncompressed pixel data")
    rows, cols = int(ds.Rows), int(ds.Columns)
    bits = int(ds.BitsAllocated)
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    planar = int(getattr(ds, "PlanarConfiguration", 0) or 0)
    if bits not in (8, 16, 32):
        raise ValueError_(f"alterPixels does not support BitsAllocated={bits}")
    dtype = np.dtype({8: "u1", 16: "u2", 32: "u4"}[bits]).newbyteorder("<" if ts.is_little_endian else ">")
    raw = ds.PixelData
    buf = bytearray(raw)
    count = rows * cols * spp * frames
    arr = np.frombuffer(buf, dtype=dtype, count=count)
    if spp == 1:
        view = arr.reshape(frames, rows, cols)
        view[:, max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)] = value
    elif planar == 0:
        view = arr.reshape(frames, rows, cols, spp)
        view[:, max(top, 0):max(bottom, 0), max(left, 0):max(right, 0), :] = value
    else:
        view = arr.reshape(frames, spp, rows, cols)
        view[:, :, max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)] = value
    ds.PixelData = bytes(buf)
