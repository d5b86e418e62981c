"""Fiji ROIs: spine-run --roi writes one rectangle per spine per slice, named and positioned as Fiji counts."""

import numpy as np
import roifile
from typer.testing import CliRunner

from spinedet.runtime.cli import run_app
from spinedet.runtime.rois import rois_zip_bytes
from spinedet.runtime.tables import BoxTable, read_box_table


def test_rectangles_round_trip_with_1_based_slices(tmp_path):
    table = BoxTable.from_rows([1, 1, 2], [0, 1, 5], [[10.4, 20.6, 22.2, 30.9], [11, 21, 23, 31], [50, 60, 58, 71]],
                               [0.9, 0.8, 0.95])
    path = tmp_path / "s_rois.zip"
    path.write_bytes(rois_zip_bytes(table))
    rois = roifile.roiread(path)
    assert [r.name for r in rois] == ["spine-1-z1", "spine-1-z2", "spine-2-z6"]
    assert [r.position for r in rois] == [1, 2, 6]  # Fiji's slice numbers: z + 1
    assert all(r.roitype == roifile.ROI_TYPE.RECT for r in rois)
    assert (rois[0].left, rois[0].top, rois[0].right, rois[0].bottom) == (10, 21, 22, 31)
    assert (rois[2].left, rois[2].top, rois[2].right, rois[2].bottom) == (50, 60, 58, 71)


def test_a_channel_gives_hyperstack_positions(tmp_path):
    table = BoxTable.from_rows([3], [4], [[1, 2, 9, 12]], [0.9])
    path = tmp_path / "c_rois.zip"
    path.write_bytes(rois_zip_bytes(table, channel=1))
    roi, = roifile.roiread(path)
    assert (roi.c_position, roi.z_position, roi.t_position) == (2, 5, 1)


def test_spine_run_writes_the_rois_of_its_boxes_table(good_stack_path, blob_model, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(run_app, [str(good_stack_path), "--model", str(blob_model), "--out", str(out),
                                          "--roi", "-q"])
    assert result.exit_code == 0, result.output
    table = read_box_table(out / "good_boxes.csv")
    rois = roifile.roiread(out / "good_rois.zip")
    assert len(rois) == len(table) == 16
    for roi, spine_id, z, box in zip(rois, table.spine_id, table.z, table.boxes):
        assert roi.name == f"spine-{spine_id}-z{z + 1}" and roi.position == z + 1
        assert np.allclose([roi.left, roi.top, roi.right, roi.bottom], box, atol=0.5)
