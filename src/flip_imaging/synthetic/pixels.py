"""Deterministic phantom pixel data, one slice at a time.

A body ellipse with lungs, a spine and a spherical "lesion" whose cross-section changes with slice
position, so a converted volume is visibly 3-D and slice order mistakes show. Values are stored
unsigned 16-bit (12 bits used) so CT is stored = HU + 1024 with RescaleIntercept -1024.
"""

from __future__ import annotations

import numpy as np


class Phantom:
    """Slices of one phantom volume; holds only the coordinate grid (rows x cols floats)."""

    def __init__(self, rows: int, cols: int, n_slices: int, modality: str = "CT") -> None:
        self.rows, self.cols, self.n_slices, self.modality = rows, cols, max(n_slices, 1), modality
        y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
        self._x = (x - cols / 2) / (cols / 2)  # -1..1
        self._y = (y - rows / 2) / (rows / 2)

    def slice_values(self, index: int) -> np.ndarray:
        """Physical values (HU for CT, arbitrary signal for MR) of slice ``index`` as int32."""
        x, y = self._x, self._y
        z = (index + 0.5) / self.n_slices * 2 - 1  # -1..1 along the volume
        ct = self.modality == "CT"
        img = np.full((self.rows, self.cols), -1000 if ct else 0, dtype=np.int32)
        body = (x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1
        img[body] = 40 if ct else 600
        for cx in (-0.4, 0.4):
            lung = ((x - cx) / 0.28) ** 2 + ((y + 0.05) / 0.4) ** 2 <= 1 - 0.5 * z * z
            img[lung] = -800 if ct else 80
        spine = (x / 0.1) ** 2 + ((y - 0.45) / 0.1) ** 2 <= 1
        img[spine] = 1000 if ct else 300
        r2 = max(0.0, 0.04 - (z * 0.2) ** 2)
        lesion = (x - 0.35) ** 2 + (y - 0.1) ** 2 <= r2
        img[lesion] = 120 if ct else 1200
        # A gentle gradient makes every slice distinct, so pixel-equality checks are meaningful.
        img += (index % 7) + ((self._x * 10).astype(np.int32) if not ct else 0)
        return img

    def slice_bytes(self, index: int) -> bytes:
        """Stored little-endian uint16 pixel bytes of slice ``index``."""
        values = self.slice_values(index)
        stored = values + 1024 if self.modality == "CT" else values
        return np.clip(stored, 0, 4095).astype("<u2").tobytes()
