"""Real-data label loaders: every format on tiny files made here, and the real 2D set if present."""

import json
from pathlib import Path

import imagecodecs
import numpy as np
import pytest

from spinedet.runtime.errors import SpineDetError
from spinedet.training.data import data_root
from spinedet.training.labels import (load_real2d_mdg, read_label_csv, read_tracking_csv, read_via_json,
                                      read_yolo_dataset, read_yolo_txt, split_by_group)

SHARED_DATA = data_root()  # $SPINEDET_DATA or ../shared/data, as the commands decide


def _png(path: Path, height: int, width: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(imagecodecs.png_encode(np.zeros((height, width), dtype=np.uint8)))
    return path


# --- label CSV -------------------------------------------------------------------------------

def test_label_csv_groups_rows_by_image(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "filename,width,height,class,xmin,ymin,xmax,ymax,type,score,note\n"
        "train/a.png,512,512,spine,10,20,30,40,M,0.9,x\n"
        "train/b.png,1024,1024,spine,1.5,2.5,3.5,4.5,S,,\n"
        "train/a.png,512,512,spine,50,60,70,80,T,1,\n"
        "train/empty.png,256,256,spine,,,,,,,\n")
    images = read_label_csv(tmp_path / "labels.csv")
    assert [im.path for im in images] == [tmp_path / "train" / n for n in ("a.png", "b.png", "empty.png")]
    a, b, empty = images
    np.testing.assert_array_equal(a.boxes, [[10, 20, 30, 40], [50, 60, 70, 80]])
    assert (a.width, a.height, a.types, a.classes) == (512, 512, ("M", "T"), ("spine", "spine"))
    np.testing.assert_array_equal(a.scores, [0.9, 1.0])
    np.testing.assert_array_equal(b.boxes, [[1.5, 2.5, 3.5, 4.5]])
    assert b.scores.tolist() == [1.0] and (b.width, b.height) == (1024, 1024)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.width == 256
    assert a.group == "train/a.png" and a.z is None
    # another image root
    other = read_label_csv(tmp_path / "labels.csv", image_root=tmp_path / "elsewhere")
    assert other[0].path == tmp_path / "elsewhere" / "train" / "a.png"


@pytest.mark.parametrize("text, message", [
    ("filename,width,height,class,xmin,ymin,xmax\na.png,1,1,spine,1,2,3\n", "missing column"),
    ("filename,xmin,ymin,xmax,ymax\na.png,1,2,abc,4\n", "line 2"),
    ("filename,xmin,ymin,xmax,ymax\na.png,5,2,3,4\n", "no area"),
    ("filename,width,height,xmin,ymin,xmax,ymax\na.png,10,10,1,2,3,4\na.png,20,10,1,2,3,4\n", "differs"),
    ("", "empty"),
])
def test_label_csv_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(SpineDetError, match=message) as info:
        read_label_csv(path)
    assert "bad.csv" in str(info.value) and "\n" not in str(info.value)


def test_paper_tracking_csv_reads_as_slices_and_as_a_3d_table(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text(
        "id,filename,width,height,class,score,xmin,ymin,xmax,ymax\n"
        "0,/home/x/images/SR052stack1-06.png,512.0,512.0,spine,1.0,229.9,476.4,242.5,489.8\n"
        "0,/home/x/images/SR052stack1-07.png,512.0,512.0,spine,1.0,230.6,473.5,247.8,492.1\n"
        "1,/home/x/images/SR052stack1-07.png,512.0,512.0,spine,0.8,10,20,30,40\n"
        "2,/home/x/images/SR052stack2-03.png,512.0,512.0,spine,1.0,1,2,3,4\n")
    table = read_tracking_csv(path)
    assert table.sources() == ["SR052stack1", "SR052stack2"]     # ids are global over the file
    assert table.z.tolist() == [6, 7, 7, 3] and table.spine_id.tolist() == [0, 0, 1, 2]
    slices = read_label_csv(path, image_root=tmp_path / "slices")
    assert [(im.group, im.z, len(im)) for im in slices] == [("SR052stack1", 6, 1), ("SR052stack1", 7, 2),
                                                            ("SR052stack2", 3, 1)]
    assert slices[1].path == tmp_path / "slices" / "SR052stack1-07.png"   # absolute names moved under the root
    np.testing.assert_array_equal(slices[1].scores, [1.0, 0.8])


# --- VIA -------------------------------------------------------------------------------------

VIA_REGIONS = [
    {"shape_attributes": {"name": "rect", "x": 10, "y": 20, "width": 5, "height": 6},
     "region_attributes": {"type": "M"}},
    {"shape_attributes": {"name": "polygon", "all_points_x": [3, 9, 5], "all_points_y": [4, 2, 8]},
     "region_attributes": {"class": "spine"}},
    {"shape_attributes": {"name": "circle", "cx": 50, "cy": 40, "r": 2}, "region_attributes": {}},
    {"shape_attributes": {"name": "ellipse", "cx": 30, "cy": 30, "rx": 4, "ry": 2, "theta": 0},
     "region_attributes": {"label": {"dendrite": True}}},
]


def test_via2_project_file(tmp_path):
    _png(tmp_path / "img" / "s1.png", 64, 80)
    project = {"_via_settings": {}, "_via_img_metadata": {
        "s1.png1234": {"filename": "s1.png", "size": 1234, "regions": VIA_REGIONS, "file_attributes": {}},
        "missing.png99": {"filename": "missing.png", "size": 99, "regions": [], "file_attributes": {}},
    }}
    (tmp_path / "project.json").write_text(json.dumps(project))
    s1, missing = read_via_json(tmp_path / "project.json", image_root=tmp_path / "img")
    np.testing.assert_allclose(s1.boxes, [[10, 20, 15, 26], [3, 2, 9, 8], [48, 38, 52, 42], [26, 28, 34, 32]])
    assert s1.types == ("M", "", "", "") and s1.classes == ("spine", "spine", "spine", "dendrite")
    assert (s1.width, s1.height) == (80, 64) and s1.path == tmp_path / "img" / "s1.png"
    assert len(missing) == 0 and missing.width is None


def test_via_flat_export_and_via1_region_dicts(tmp_path):
    export = {
        "a.png10": {"filename": "a.png", "size": 10, "file_attributes": {},
                    "regions": {"1": VIA_REGIONS[1], "0": VIA_REGIONS[0]}},       # VIA 1.x
        "b.png11": {"filename": "b.png", "size": 11, "file_attributes": {}, "regions": [VIA_REGIONS[2]]},
    }
    (tmp_path / "export.json").write_text(json.dumps(export))
    a, b = read_via_json(tmp_path / "export.json")
    np.testing.assert_allclose(a.boxes, [[10, 20, 15, 26], [3, 2, 9, 8]])
    np.testing.assert_allclose(b.boxes, [[48, 38, 52, 42]])
    assert a.path == tmp_path / "a.png"


@pytest.mark.parametrize("content, message", [
    ({"x.png1": {"filename": "x.png", "regions": [{"shape_attributes": {"name": "point", "cx": 1, "cy": 2}}]}},
     "point"),
    ({"x.png1": {"filename": "x.png", "regions": [{"shape_attributes": {"name": "rect", "x": 1}}]}}, "region 0"),
    ({"project": {}, "file": {}, "metadata": {}}, "VIA 3"),
    ([1, 2], "not a VIA"),
])
def test_via_errors(tmp_path, content, message):
    path = tmp_path / "via.json"
    path.write_text(json.dumps(content))
    with pytest.raises(SpineDetError, match=message):
        read_via_json(path)


def test_via_rejects_broken_json(tmp_path):
    (tmp_path / "via.json").write_text("{not json")
    with pytest.raises(SpineDetError, match="not valid JSON"):
        read_via_json(tmp_path / "via.json")


# --- YOLO ------------------------------------------------------------------------------------

def test_yolo_boxes_polygons_and_predictions(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("0 0.5 0.25 0.1 0.2\n\n0 0.1 0.1 0.3 0.1 0.2 0.4\n1 0.5 0.5 0.2 0.2 0.75\n")
    image = read_yolo_txt(path, width=200, height=100, names=["spine", "other"])
    np.testing.assert_allclose(image.boxes, [[90, 15, 110, 35], [20, 10, 60, 40], [80, 40, 120, 60]])
    assert image.classes == ("spine", "spine", "other")
    np.testing.assert_allclose(image.scores, [1, 1, 0.75])
    assert (image.width, image.height) == (200, 100)


@pytest.mark.parametrize("line", ["0 0.5 0.5 0.1\n", "0 0.1 0.1 0.3 0.1 0.2 0.4 0.5\n", "x 0.5 0.5 0.1 0.1\n",
                                  "0.5 0.5 0.5 0.1 0.1\n", "0 0.5 0.5 0 0.1\n"])
def test_yolo_malformed_lines(tmp_path, line):
    (tmp_path / "a.txt").write_text(line)
    with pytest.raises(SpineDetError, match="line 1"):
        read_yolo_txt(tmp_path / "a.txt", 100, 100)


def test_yolo_needs_the_image_size(tmp_path):
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(SpineDetError, match="image size"):
        read_yolo_txt(tmp_path / "a.txt", None, None)


def test_yolo_dataset_layout(tmp_path):
    _png(tmp_path / "images" / "train" / "a.png", 50, 100)
    _png(tmp_path / "images" / "train" / "b.png", 40, 40)            # no label file: no spines
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    a, b = read_yolo_dataset(tmp_path / "images" / "train")
    np.testing.assert_allclose(a.boxes, [[40, 20, 60, 30]])
    assert (a.width, a.height, a.path.name) == (100, 50, "a.png")
    assert len(b) == 0 and (b.width, b.height) == (40, 40)


# --- splits ----------------------------------------------------------------------------------

def test_split_by_group_keeps_groups_together_and_is_deterministic():
    items = [(f"stack{k % 11}", k) for k in range(200)]
    parts = split_by_group(items, key=lambda item: item[0], fractions=(0.7, 0.2, 0.1), seed=3)
    groups = [{g for g, _ in part} for part in parts]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert [len(g) for g in groups] == [8, 2, 1]
    assert sorted(x for part in parts for x in part) == sorted(items)
    again = split_by_group(list(reversed(items)), key=lambda item: item[0], fractions=(0.7, 0.2, 0.1), seed=3)
    assert [{g for g, _ in part} for part in again] == groups
    other = split_by_group(items, key=lambda item: item[0], fractions=(0.7, 0.2, 0.1), seed=4)
    assert [{g for g, _ in part} for part in other] != groups
    # a small share still gets a group; an attribute name works as the key
    class Slice:
        def __init__(self, group):
            self.group = group
    few = split_by_group([Slice(f"s{k}") for k in range(5)], "group", (0.9, 0.05, 0.05))
    assert [len(p) for p in few] == [3, 1, 1]
    with pytest.raises(ValueError):
        split_by_group(items, lambda item: item[0], (0.5, -0.5))


# --- the real 2D set -------------------------------------------------------------------------

@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_DATA / "real2d-mdg" / "labels.csv").is_file(),
                    reason=f"real data not found at {SHARED_DATA / 'real2d-mdg'}")
def test_real2d_mdg():
    root = SHARED_DATA / "real2d-mdg"
    train, val = load_real2d_mdg(root, "train"), load_real2d_mdg(root, "val")
    assert (len(train), len(val)) == (200, 15)
    assert sum(len(im) for im in train + val) == 1378
    assert all(im.path.is_file() for im in train + val)
    assert {(im.width, im.height) for im in train + val} == {(512, 512), (1024, 1024)}
    boxes = np.concatenate([im.boxes for im in train + val])
    sizes = np.concatenate([[[im.width, im.height]] * len(im) for im in train + val])
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= sizes)
    assert set(np.concatenate([im.types for im in train + val])) <= set("MSBTF")
    assert len({im.group for im in train + val}) == 215
    assert not {im.path for im in train} & {im.path for im in val}
    with pytest.raises(SpineDetError, match="split"):
        load_real2d_mdg(root, "test")
