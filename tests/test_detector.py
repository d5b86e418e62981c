import json

import numpy as np
import pytest

from blob_model import blob_image, build_blob_model
from spinedet.runtime import SpineDetector as ExportedDetector
from spinedet.runtime.detector import SpineDetector
from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.spines import box_fluorescence

# spine (x, y) -> slices where it is visible
SPINES = {(30, 40): range(0, 10), (90, 70): [2, 3, 4, 6], (60, 100): [7, 8]}


def synthetic_stack(shape=(10, 128, 128)):
    slices = []
    for z in range(shape[0]):
        visible = [xy for xy, zs in SPINES.items() if z in zs]
        slices.append(blob_image(shape[1:], visible, sigma=2.0, noise=3, seed=z))
    return np.stack(slices).astype(np.uint16)


def test_library_import_name():
    assert ExportedDetector is SpineDetector


def test_detect_tracks_spines_through_z(blob_model):
    result = SpineDetector(blob_model).detect(synthetic_stack(), voxel_size=(0.5, 0.1, 0.1))
    assert [(s.spine_id, s.z) for s in result.spines] == [
        (1, tuple(range(10))), (2, (2, 3, 4, 6)), (3, (7, 8))]
    for spine, (x, y) in zip(result.spines, SPINES):
        cx, cy, _ = spine.centroid_px
        assert abs(cx - x) < 3 and abs(cy - y) < 3
        assert spine.centroid_um[0] == pytest.approx(cx * 0.1)
    assert result.spines[1].centroid_um[2] == pytest.approx(4 * 0.5)  # middle of slices 2..6 at 0.5 µm
    assert len(result.table) == 10 + 4 + 2
    assert set(result.timings) == {"read", "infer", "postprocess", "track"}


def test_batch_size_and_streaming_give_the_same_spines(blob_model):
    stack = synthetic_stack()
    one = SpineDetector(blob_model, batch=1).detect(stack)
    many = SpineDetector(blob_model, batch=8).detect(stack)
    stream = SpineDetector(blob_model).stream(intensity_range=one.intensity_range)
    streamed = []
    for image in stack:
        streamed += stream.add_slice(image)
    assert [s.spine_id for s in streamed] == [2]  # closed after slice 8; spines 1 and 3 are open at the end
    streamed += stream.finish()
    key = lambda spines: sorted((s.spine_id, s.z, tuple(np.round(s.mean_box, 3))) for s in spines)
    assert key(one.spines) == key(many.spines) == key(streamed)


def test_streaming_reports_a_spine_when_its_track_closes(blob_model):
    stack = synthetic_stack()
    stream = SpineDetector(blob_model).stream(intensity_range=(100, 1000))
    closed_at = {}
    for z, image in enumerate(stack):
        for spine in stream.add_slice(image):
            closed_at[spine.spine_id] = z
    # spine 2 is last seen on slice 6 and closes after two misses (slices 7 and 8)
    assert closed_at == {2: 8}
    assert sorted(s.spine_id for s in stream.finish()) == [1, 3]


def test_streaming_waits_for_its_warmup_slices_then_fixes_the_range(blob_model):
    from spinedet.runtime.contract import intensity_range

    stack = synthetic_stack()
    detector = SpineDetector(blob_model)
    whole = detector.detect(stack)
    dark = np.zeros((2,) + stack.shape[1:], stack.dtype)  # e.g. two frames with the shutter still closed
    stream = detector.stream(warmup_slices=3)
    found = []
    for k, image in enumerate(np.concatenate([dark, stack])):
        found += stream.add_slice(image)
        if k < 4:  # two dark frames and two slices: the range is not known yet, nothing is searched
            assert stream.intensity_range is None and stream.tracker._last_z is None
    # the range comes from the first three slices that are not blank
    assert stream.intensity_range == pytest.approx(intensity_range(list(stack[:3]), detector.card))
    found += stream.finish()
    # the same spines, two slices further down
    assert sorted((s.z[0] - 2, s.z[-1] - 2) for s in found) == sorted((s.z[0], s.z[-1]) for s in whole.spines)


def test_depth_context_is_the_projection_of_the_neighbours(tmp_path):
    # this model finds blobs in its context channel only: where a slice's neighbour projection holds them
    model = build_blob_model(tmp_path / "depth.onnx", depth_context_um=0.5)
    stack = synthetic_stack()
    detector = SpineDetector(model)
    z_ranges = lambda spines: sorted((s.z[0], s.z[-1], len(s.z)) for s in spines)
    # 0.5 µm steps: one slice above and below; spine 2 (slices 2-4, 6) is seen from 1 to 7, spine 3 (7-8) from 6 to 9
    result = detector.detect(stack, voxel_size=(0.5, 0.1, 0.1))
    assert z_ranges(result.spines) == [(0, 9, 10), (1, 7, 7), (6, 9, 4)] and result.context_slices == 1
    # 1 µm steps: no neighbour within 0.5 µm, the context is the slice itself
    assert z_ranges(detector.detect(stack, voxel_size=(1.0, 0.1, 0.1)).spines) == [(0, 9, 10), (2, 6, 4), (7, 8, 2)]
    # streamed: the same spines, each slice searched once the slice below it has arrived
    stream = detector.stream(voxel_size=(0.5, 0.1, 0.1), intensity_range=result.intensity_range)
    assert stream.lag == 1
    found = []
    for image in stack:
        found += stream.add_slice(image)
    found += stream.finish()
    assert z_ranges(found) == z_ranges(result.spines)
    assert detector.slice_detections(stack, (0.5, 0.1, 0.1))[1][0].shape == (2, 4)  # spines 1 and 2 in slice 1


def test_max_projection_mode(blob_model):
    result = SpineDetector(blob_model).detect(synthetic_stack(), mip=True, projection=True)
    assert result.mip and len(result.spines) == 3
    assert all(s.z == (0,) for s in result.spines)
    assert result.projection.shape == (128, 128)


def test_score_threshold_and_area_cap_apply(blob_model, tmp_path):
    stack = synthetic_stack()
    scaled = build_blob_model(tmp_path / "scaled.onnx", score_scale=0.8)  # spines score 0.8
    assert SpineDetector(scaled, score_threshold=0.85).detect(stack).spines == []
    assert len(SpineDetector(scaled, score_threshold=0.75).detect(stack).spines) == 3
    # the test model's boxes are 12x12 px = 1.44 µm² at 0.1 µm/px
    assert SpineDetector(blob_model, max_area_um2=1.0).detect(stack).spines == []
    assert len(SpineDetector(blob_model, max_area_um2=1.5).detect(stack).spines) == 3


def test_box_fluorescence_subtracts_local_background():
    image = np.full((60, 60), 100.0)
    image[20:30, 20:30] += 50  # a 10x10 spine
    image[0:5, 0:60] = 5000  # a bright structure far away does not matter
    values = box_fluorescence(image, [[20, 20, 30, 30]])
    assert values[0, 1] == pytest.approx(100)
    assert values[0, 0] == pytest.approx(50 * 100)


def test_spine_between_bright_shafts_keeps_a_positive_fluorescence():
    """The frame around a spine that sits between two shafts is mostly shaft: it is not the background."""
    rng = np.random.default_rng(0)
    image = 10 + rng.normal(0, 2, (100, 100))
    image[:, 30:50] += 240  # a shaft left of the spine
    image[:, 58:80] += 240  # and one right of it
    image[40:50, 50:58] += 140  # the spine: 8 x 10 px, dimmer than the shafts, far brighter than the background
    fluorescence, background = box_fluorescence(image, [[50, 40, 58, 50]])[0]
    assert background == pytest.approx(10, abs=3)  # the dark gap above and below, not the shafts' 250
    assert fluorescence == pytest.approx(140 * 80, rel=0.05)


def test_integrated_fluorescence_of_a_tracked_spine(blob_model):
    stack = synthetic_stack().astype(np.float32)
    result = SpineDetector(blob_model).detect(stack)
    spine = result.spines[0]
    expected = sum(box_fluorescence(stack[z], [box])[0, 0] for z, box in zip(spine.z, spine.boxes))
    assert spine.fluorescence == pytest.approx(expected)
    assert spine.background == pytest.approx(100, abs=2)
    gap = result.spines[1]  # slices 2, 3, 4, 6: slice 5 counts as the mean of slices 4 and 6
    per_slice = [box_fluorescence(stack[z], [b])[0, 0] for z, b in zip(gap.z, gap.boxes)]
    assert gap.fluorescence == pytest.approx(sum(per_slice) + (per_slice[2] + per_slice[3]) / 2)


@pytest.mark.parametrize("array, message", [
    (np.zeros((3, 64, 64), np.uint16), "blank"),
    (np.zeros((2, 3, 64, 64)), "expected a"),
    (np.zeros((0, 64, 64)), "empty"),
    (np.ones((8, 8)) * np.arange(8), "smaller than a spine"),
    (np.zeros((4, 4), bool), "pixel type"),
])
def test_bad_arrays_raise_one_clear_error(blob_model, array, message):
    with pytest.raises(SpineDetError, match=message):
        SpineDetector(blob_model).detect(array)


def test_nan_or_infinite_pixels_raise_one_clear_error(blob_model):
    """Float stacks padded with NaN by a registration tool: refused, whether or not the range sampled them."""
    stack = synthetic_stack().astype(np.float32)
    stack[0, 5, 5] = np.nan
    with pytest.raises(SpineDetError, match="1 of 16,384 pixels read are NaN or infinite"):
        SpineDetector(blob_model).detect(stack[:1])
    with pytest.raises(SpineDetError, match="NaN or infinite"):
        SpineDetector(blob_model).detect(stack)
    padded = stack[1].copy()
    padded[:, :4] = np.inf
    # a slice the intensity range was not sampled from (a long stack samples 16 slices) is refused at inference
    with pytest.raises(SpineDetError, match="512 of 16,384 pixels read are NaN or infinite"):
        SpineDetector(blob_model).raw_detections([padded], 0.1, (90.0, 1100.0))


def test_wrong_model_files(tmp_path, blob_model):
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model")
    text.with_suffix(".json").write_text(blob_model.with_suffix(".json").read_text())
    with pytest.raises(SpineDetError, match="text.onnx: not a usable ONNX model"):
        SpineDetector(text)
    with pytest.raises(SpineDetError, match="no such model file"):
        SpineDetector(tmp_path / "missing.onnx")
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(blob_model.read_bytes())
    with pytest.raises(SpineDetError, match="no model card lonely.json"):
        SpineDetector(lonely)
    wrong_size = tmp_path / "wrong.onnx"
    wrong_size.write_bytes(blob_model.read_bytes())
    card = json.loads(blob_model.with_suffix(".json").read_text())
    wrong_size.with_suffix(".json").write_text(json.dumps({**card, "input_size": [256, 256]}))
    with pytest.raises(SpineDetError, match="the card says"):
        SpineDetector(wrong_size)
    wrong_size.with_suffix(".json").write_text("{not json")
    with pytest.raises(SpineDetError, match="not valid JSON"):
        SpineDetector(wrong_size)
    with pytest.raises(SpineDetError, match="unknown device .quantum.; choose one of auto, cpu"):
        SpineDetector(blob_model, device="quantum")


def test_fixed_batch_one_model_is_run_slice_by_slice(tmp_path):
    model = build_blob_model(tmp_path / "b1.onnx", batch=1)
    detector = SpineDetector(model, batch=8)
    assert detector.backend.max_batch == 1
    assert len(detector.detect(synthetic_stack()).spines) == 3


def test_missing_gpu_provider_is_a_clear_error(blob_model):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(SpineDetError, match="needs onnxruntime with CUDAExecutionProvider"):
        SpineDetector(blob_model, device="cuda")


def test_card_and_model_must_agree_on_depth_context(blob_model, tmp_path):
    import shutil

    model = tmp_path / "m.onnx"
    shutil.copy(blob_model, model)
    card = json.loads(blob_model.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**card, "depth_context_um": 1.0}))  # the graph takes 1 channel
    with pytest.raises(SpineDetError, match=r"the card says \[B, 2, 128, 128\]"):
        SpineDetector(model)
    model.with_suffix(".json").write_text(json.dumps({**card, "depth_context_um": 50}))
    with pytest.raises(SpineDetError, match="depth_context_um"):
        SpineDetector(model)


def test_faint_slices_extend_a_confident_spine_and_faint_tracks_are_dropped(tmp_path):
    # spine A at (30, 40): faint (0.6 of the brightest) in slices 0-4 except slice 2, where it is bright;
    # spine B at (90, 70): faint in every slice.  Scores are the normalised peak intensity.
    shape = (5, 128, 128)
    stack = np.stack([blob_image(shape[1:], [(30, 40)], amplitude=1000.0 if z == 2 else 600.0)
                      + blob_image(shape[1:], [(90, 70)], amplitude=600.0, background=0.0)
                      for z in range(shape[0])])
    extra = {"high_percentile": 100.0, "low_percentile": 0.0, "score_threshold": 0.8}
    linked = build_blob_model(tmp_path / "linked.onnx", card_extra={**extra, "link_threshold": 0.5})
    result = SpineDetector(linked).detect(stack, voxel_size=(0.5, 0.1, 0.1))
    assert [(s.spine_id, s.z) for s in result.spines] == [(1, (0, 1, 2, 3, 4))]
    assert abs(result.spines[0].centroid_px[0] - 30) < 3
    assert result.table.score.max() > 0.8 > result.table.score.min() > 0.5
    # the same model without a link threshold: every box must pass 0.8, so A is one slice deep
    alone = build_blob_model(tmp_path / "alone.onnx", card_extra=extra)
    assert [s.z for s in SpineDetector(alone).detect(stack, voxel_size=(0.5, 0.1, 0.1)).spines] == [(2,)]
    # a lower --score-threshold lowers the link threshold with it: both spines, all slices
    assert [s.z for s in SpineDetector(linked, score_threshold=0.3).detect(stack).spines] == [(0, 1, 2, 3, 4)] * 2
    # streamed slice by slice: the same spine
    stream = SpineDetector(linked).stream(voxel_size=(0.5, 0.1, 0.1), intensity_range=result.intensity_range)
    found = [s for image in stack for s in stream.add_slice(image)] + stream.finish()
    assert [(s.spine_id, s.z) for s in found] == [(1, (0, 1, 2, 3, 4))]


def test_card_link_threshold_above_the_score_threshold_is_refused(tmp_path):
    model = build_blob_model(tmp_path / "m.onnx", card_extra={"score_threshold": 0.6, "link_threshold": 0.7})
    with pytest.raises(SpineDetError, match="link_threshold"):
        SpineDetector(model)
