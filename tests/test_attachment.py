"""The shaft attachment check (runtime/attachment.py): spines sit on dendrites, puncta do not."""

import json

import numpy as np
import pytest
import tifffile
from blob_model import blob_image, build_blob_model
from typer.testing import CliRunner

from spinedet.runtime.attachment import attached, large_regions, shaft_distance
from spinedet.runtime.cli import run_app
from spinedet.runtime.contract import load_card
from spinedet.runtime.detector import SpineDetector, shipped_model_path


def scene(pixel_um, field_um=25.6, shaft=((2.0, 22.0), 8.0), objects=()):
    """A ``(Y, X)`` image of a horizontal shaft 1 µm wide (x range and y centre in µm) and round objects
    ``(x, y, radius)`` in µm, drawn at ``pixel_um``; background 10, structures 100."""
    n = int(round(field_um / pixel_um))
    y, x = (np.mgrid[0:n, 0:n] + 0.5) * pixel_um
    image = np.full((n, n), 10.0, dtype=np.float32)
    if shaft is not None:
        (x0, x1), yc = shaft
        image[(x >= x0) & (x <= x1) & (abs(y - yc) <= 0.5)] = 100.0
    for cx, cy, r in objects:
        image[(x - cx) ** 2 + (y - cy) ** 2 <= r * r] = 100.0
    return image


def boxes_um(objects, pixel_um):
    """Pixel boxes around the objects ``(x, y, radius)`` (µm)."""
    return np.array([[cx - r, cy - r, cx + r, cy + r] for cx, cy, r in objects]) / pixel_um


#: a head on the shaft, a head 0.6 µm off it (its neck too faint to see), a punctum 9.6 µm away
OBJECTS = [(10.0, 8.9, 0.4), (14.0, 6.5, 0.4), (12.0, 18.0, 0.4)]


@pytest.mark.parametrize("pixel_um", [0.1, 0.065, 0.15])
def test_heads_on_or_near_a_shaft_are_attached_and_a_lone_punctum_is_not(pixel_um):
    image = scene(pixel_um, objects=OBJECTS)
    distance = shaft_distance(image, boxes_um(OBJECTS, pixel_um), pixel_um)
    assert distance[0] == 0
    assert 0.3 < distance[1] < 0.9  # the 0.6 µm gap, less the smoothing
    assert distance[2] > 8
    assert attached(image, boxes_um(OBJECTS, pixel_um), pixel_um).tolist() == [True, True, False]
    assert attached(image, boxes_um(OBJECTS, pixel_um), pixel_um, max_distance_um=10).tolist() == [True] * 3


def test_a_short_dendrite_alone_in_its_field_is_a_shaft():
    """A field showing 4 µm of dendrite (4 µm², below the 10 µm² rule): it is the largest thing there."""
    objects = [(11.0, 8.9, 0.4), (12.0, 18.0, 0.4)]
    image = scene(0.1, shaft=((9.0, 13.0), 8.0), objects=objects)
    assert attached(image, boxes_um(objects, 0.1), 0.1).tolist() == [True, False]


def test_a_dendrite_cut_by_the_border_is_a_shaft():
    """A 2 µm stump entering from the left edge counts, however little of it the crop shows."""
    image = scene(0.1, objects=[(2.0, 20.0, 0.4)])
    image[(np.arange(256)[:, None] // 10 == 18) & (np.arange(256)[None, :] < 20)] = 100.0  # y 18-19 µm, x 0-2 µm
    mask, factor = large_regions(image, 0.1)
    assert factor == 2 and mask[185 // 2, 5 // 2]
    assert attached(image, boxes_um([(2.0, 20.0, 0.4)], 0.1), 0.1).tolist() == [True]


def test_a_soma_far_brighter_than_the_dendrites_does_not_detach_every_spine():
    """A 4 µm-radius soma 20x brighter than the shaft would lift Otsu's threshold above the shaft; the threshold
    is kept below the boxes' own brightness, so the heads stay attached and the punctum stays alone."""
    image = scene(0.1, objects=OBJECTS)
    y, x = (np.mgrid[0:256, 0:256] + 0.5) * 0.1
    image[(x - 20) ** 2 + (y - 20) ** 2 <= 16] = 2000.0
    assert attached(image, boxes_um(OBJECTS, 0.1), 0.1).tolist() == [True, True, False]


def test_an_image_without_contrast_keeps_every_box():
    boxes = [[10, 10, 20, 20], [50, 50, 60, 60]]
    assert np.isnan(shaft_distance(np.full((64, 64), 7.0), boxes, 0.1)).all()
    assert attached(np.full((64, 64), 7.0), boxes, 0.1).tolist() == [True, True]
    assert shaft_distance(np.zeros((64, 64)), np.zeros((0, 4)), 0.1).shape == (0,)


def attachment_image():
    """128 x 128 at 0.1 µm: a dim shaft across the field (too dim for the blob model's peaks), a bright head on
    it, and a bright punctum 6 µm away from it."""
    image = blob_image((128, 128), [(40, 50), (90, 110)], sigma=2.0, noise=3, seed=1)
    image[40:48, :] += 250.0
    return image.astype(np.uint16)


@pytest.fixture(scope="module")
def shaft_model(tmp_path_factory):
    """The blob model with a card that asks for the check, as the shipped model's does."""
    return build_blob_model(tmp_path_factory.mktemp("shaft") / "blob.onnx", card_extra={"shaft_distance_um": 1.0})


def test_the_detector_drops_detached_boxes_when_its_card_asks(blob_model, shaft_model):
    image = attachment_image()
    plain = SpineDetector(blob_model).detect(image).spines
    checked = SpineDetector(shaft_model).detect(image).spines
    assert len(plain) == 2
    assert len(checked) == 1
    assert np.allclose(checked[0].centroid_px[:2], (40, 50), atol=3)  # the head on the shaft, not the punctum
    assert SpineDetector(shaft_model, shaft_distance_um=float("inf")).shaft_distance_um is None
    assert len(SpineDetector(shaft_model, shaft_distance_um=float("inf")).detect(image).spines) == 2
    assert len(SpineDetector(blob_model, shaft_distance_um=1.0).detect(image).spines) == 1
    # a stack: the check looks at each slice (here its own context), so the punctum is dropped in every slice
    stack = np.stack([image] * 4)
    assert len(SpineDetector(shaft_model).detect(stack, voxel_size=(0.5, 0.1, 0.1)).spines) == 1


def test_the_check_sees_the_depth_context_and_is_off_where_slices_are_farther_apart(shaft_model, tmp_path):
    model = build_blob_model(tmp_path / "depth.onnx", depth_context_um=1.5, card_extra={"shaft_distance_um": 1.0})
    detector = SpineDetector(model)
    assert [detector.shaft_reach(z) for z in (0.5, 1.5, 2.0)] == [3, 1, None]
    assert [detector.stream((z, 0.1, 0.1)).lag for z in (0.5, 2.0)] == [3, 0]
    assert SpineDetector(shaft_model).shaft_reach(2.0) == 1  # a slice-only model: one slice each side
    stack = np.stack([attachment_image()] * 3)
    fine = detector.detect(stack, voxel_size=(0.5, 0.1, 0.1))
    assert len(fine.spines) == 1 and not any("shaft" in n for n in fine.notes)
    coarse = detector.detect(stack, voxel_size=(2.0, 0.1, 0.1))
    assert len(coarse.spines) == 2
    assert [n for n in coarse.notes if "shaft" in n] == [
        "no shaft check: slices 2 µm apart are farther than the model's depth context (1.5 µm), so a spine's "
        "dendrite may lie in no slice it sees"]
    # a projection is its own context: checked whatever the z-step
    assert len(detector.detect(stack, voxel_size=(2.0, 0.1, 0.1), mip=True).spines) == 1


def test_spine_run_shaft_options(shaft_model, tmp_path):
    path = tmp_path / "field.tif"
    tifffile.imwrite(path, attachment_image(), imagej=True, resolution=(10, 10), metadata={"unit": "um"})
    runner = CliRunner()
    counts = {}
    for name, extra in {"card": [], "off": ["--no-shaft-check"], "far": ["--shaft-distance", "8"]}.items():
        out = tmp_path / name
        result = runner.invoke(run_app, [str(path), "--model", str(shaft_model), "--out", str(out), "-q", *extra])
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "field_summary.json").read_text())
        counts[name] = (summary["n_spines"], summary["settings"]["shaft_distance_um"])
    assert counts == {"card": (1, 1.0), "off": (2, None), "far": (2, 8.0)}
    result = runner.invoke(run_app, [str(path), "--model", str(shaft_model), "--out", str(tmp_path / "bad"),
                                     "--shaft-distance", "-1"])
    assert result.exit_code == 2 and not (tmp_path / "bad").exists()


def test_the_shipped_card_asks_for_the_check():
    assert load_card(shipped_model_path()).shaft_distance_um == 1.0
    assert load_card(shipped_model_path("spinedet_default_trt.onnx")).shaft_distance_um == 1.0
    assert load_card(shipped_model_path("spinedet_default_int8.onnx")).shaft_distance_um == 1.0


def _real_spines(root, split):
    from spinedet.runtime.stacks import read_image
    from spinedet.training.labels import load_real2d_mdg

    for item in load_real2d_mdg(root / "real2d-mdg", split):
        yield item.path.name, np.asarray(read_image(item.path)).reshape(item.height, item.width), item.boxes


@pytest.mark.parametrize("pixel_um", [0.065, 0.1, 0.2])
def test_every_labelled_real_spine_of_real2d_mdg_val_is_attached(shared_data, pixel_um):
    """Another lab's real images (dendrites on black, fields of 512 px, pixel size not stated): the rule keeps every
    labelled spine, whole images and 128-px crops, whatever pixel size is assumed."""
    for name, image, boxes in _real_spines(shared_data, "val"):
        assert attached(image, boxes, pixel_um).all(), name
        for y, x in ((0, 0), (192, 192), (384, 384)):
            inside = (boxes[:, 0] >= x) & (boxes[:, 1] >= y) & (boxes[:, 2] < x + 128) & (boxes[:, 3] < y + 128)
            crop_boxes = boxes[inside] - [x, y, x, y]
            assert attached(image[y:y + 128, x:x + 128], crop_boxes, pixel_um).all(), (name, y, x)


@pytest.mark.slow
def test_every_labelled_real_spine_of_real2d_mdg_train_is_attached(shared_data):
    """The same over the 200 train images (1,276 spines; 512 and 1024 px fields) at 0.05-0.2 µm/px."""
    for name, image, boxes in _real_spines(shared_data, "train"):
        for pixel_um in (0.05, 0.1, 0.2):
            assert attached(image, boxes, pixel_um).all(), (name, pixel_um)


def test_what_the_check_removed_is_counted_and_drawn(shaft_model, tmp_path):
    from spinedet.runtime.overlay import DETACHED_COLOUR, detached_boxes, display_scale, overlay_rgb

    image = attachment_image()
    result = SpineDetector(shaft_model).detect(np.stack([image] * 3), voxel_size=(0.5, 0.1, 0.1), projection=True)
    assert len(result.spines) == 1
    assert [z for z, _, _ in result.detached] == [0, 1, 2]  # the punctum, in each slice
    assert all(np.allclose((box[:2] + box[2:]) / 2, (90, 110), atol=3) and score > 0.5
               for _, box, score in result.detached)
    rgb = overlay_rgb(result.projection, result.spines, detached=result.detached)
    s = display_scale(image.shape)
    x0, y0 = (np.asarray(result.detached[0][1][:2]) * s).round().astype(int)
    assert (rgb[y0 + 5, x0] == DETACHED_COLOUR).all()  # its left edge, in magenta
    assert len(detached_boxes(result.detached)) == 1  # one box for the three slices
    assert not (overlay_rgb(result.projection, result.spines) == DETACHED_COLOUR).all(axis=2).any()
    assert SpineDetector(shaft_model, shaft_distance_um=float("inf")).detect(image).detached == []
    # spine-run's summary counts them
    path = tmp_path / "field.tif"
    tifffile.imwrite(path, image, imagej=True, resolution=(10, 10), metadata={"unit": "um"})
    assert CliRunner().invoke(run_app, [str(path), "--model", str(shaft_model), "--out", str(tmp_path / "o"),
                                        "-q", "--overlay"]).exit_code == 0
    assert json.loads((tmp_path / "o" / "field_summary.json").read_text())["n_detached_boxes"] == 1
