"""Fiji/ImageJ ROIs of the detections: ``<stem>_rois.zip`` for Fiji's ROI Manager.

One rectangle ROI per spine per slice, named ``spine-<id>-z<slice>`` and
positioned on its slice so that ROI Manager > More > Show All on the stack
shows each box on its own slice.  Fiji counts slices from 1: a detection
in slice ``z`` (0-based, as in the CSV tables) sits at position ``z + 1``.
For a multi-channel stack read with ``--channel c`` the ROI carries the
hyperstack position (channel ``c + 1``, slice ``z + 1``).  Written with
``roifile`` (the ImageJ ROI format); boxes are ``(x_min, y_min, x_max,
y_max)`` in pixels, rounded to whole pixels as ImageJ rectangles are.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np

from .tables import BoxTable

#: the date of every file in the zip (the earliest a zip can state), so that the file depends on the boxes alone
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def rois_zip_bytes(table: BoxTable, channel: int | None = None) -> bytes:
    """The bytes of an ImageJ ROI set (a zip of ``.roi`` files), one rectangle per row of ``table``.

    channel: the 0-based channel the detections were made on, for a
    multi-channel stack (None: a plain z-stack or a single image).
    """
    from roifile import ROI_TYPE, ImagejRoi

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for spine_id, z, box in zip(table.spine_id.tolist(), table.z.tolist(), table.boxes):
            left, top, right, bottom = (int(v) for v in np.round(box))
            roi = ImagejRoi(roitype=ROI_TYPE.RECT, left=left, top=top, right=max(right, left + 1),
                            bottom=max(bottom, top + 1), name=f"spine-{spine_id}-z{z + 1}")
            if channel is None:
                roi.position = z + 1
            else:
                roi.c_position, roi.z_position, roi.t_position = channel + 1, z + 1, 1
            entry = zipfile.ZipInfo(f"{roi.name}.roi", date_time=ZIP_DATE)  # not the clock: same boxes, same bytes
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, roi.tobytes(), compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
