"""The napari plugin (spinedet.napari): table <-> layer conversions, the _boxes.csv reader and writer, the
"Detect spines" widget, and a screenshot of the drawn boxes.

The conversions need neither napari nor Qt and always run.  The rest skip without the [napari] extra; the
tests that draw (a real viewer) also skip where Qt has no OpenGL (the offscreen platform has it only with
an X display: run under xvfb-run, as `make test` does where xvfb is installed).
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from spinedet.napari.convert import centroids_from_table, shapes_from_table, table_from_shapes
from spinedet.napari.voxels import detection_array, voxel_size_from_scale
from spinedet.runtime.detector import SpineDetector
from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.tables import BoxTable, boxes_csv_text, read_box_table
from test_detector import synthetic_stack

HAVE_NAPARI = all(importlib.util.find_spec(m) for m in ("napari", "magicgui", "pytestqt", "qtpy"))
needs_napari = pytest.mark.skipif(not HAVE_NAPARI, reason="the napari plugin needs the [napari] extra "
                                                          "(napari, a Qt binding, magicgui, pytest-qt)")
MANIFEST = Path(__file__).parent.parent / "napari_plugin" / "napari.yaml"
VOXEL = (0.5, 0.1, 0.1)  # of synthetic_stack(), µm


@pytest.fixture(scope="module")
def detected(blob_model):
    """spine-run's result on the 10-slice synthetic stack (blob model): (stack, DetectionResult)."""
    stack = synthetic_stack()
    return stack, SpineDetector(blob_model).detect(stack, voxel_size=VOXEL)


@pytest.fixture
def boxes_csv(tmp_path, detected):
    """That result's _boxes.csv, as spine-run writes it."""
    path = tmp_path / "good_boxes.csv"
    path.write_text(boxes_csv_text(detected[1].table))
    return path


# --- conversions, no napari -------------------------------------------------------------------------------------


def test_round_trip_through_layer_data_is_exact(detected):
    table = detected[1].table
    assert len(table) == 16 and len(set(table.z.tolist())) == 10
    shapes, features = shapes_from_table(table)
    for corners, z, (x0, y0, x1, y1) in zip(shapes, table.z, table.boxes):
        assert corners.shape == (4, 3) and set(corners[:, 0]) == {z}
        assert sorted(map(tuple, corners[:, 1:])) == sorted([(y0, x0), (y0, x1), (y1, x1), (y1, x0)])
    assert features["slice"].tolist() == table.z.tolist()
    # as napari keeps them: float32 corners, the features as a table
    back = table_from_shapes([s.astype(np.float32) for s in shapes], features)
    assert boxes_csv_text(back) == boxes_csv_text(table)


def test_writing_back_edits_new_boxes_get_new_spines():
    table = BoxTable.from_rows([3, 3, 7], [1, 2, 5], [[10, 20, 30, 40], [11, 21, 31, 41], [50, 60, 70, 80.5]],
                               [0.9, 0.8, 0.7])
    shapes, features = shapes_from_table(table)
    shapes = [shapes[0] + [0, 5, -2], shapes[2]]  # the first box moved 5 px down, 2 left; the second deleted
    drawn = np.array([[4, 1, 1], [4, 1, 9], [4.2, 9, 9], [4, 9, 1]])  # drawn by hand in slice 4
    features = {"spine_id": [3, 7, 0], "score": [0.9, 0.7, 1.0]}
    text = boxes_csv_text(table_from_shapes(shapes + [drawn], features))
    assert text.splitlines() == ["spine_id,z,xmin,ymin,xmax,ymax,score", "3,1,8.00,25.00,28.00,45.00,0.9000",
                                 "7,5,50.00,60.00,70.00,80.50,0.7000", "8,4,1.00,1.00,9.00,9.00,1.0000"]


def test_two_d_layers_and_their_limits():
    table = BoxTable.from_rows([1, 2], [0, 0], [[1, 2, 3, 4], [5, 6, 7, 8]], [0.6, 0.7])
    shapes, _ = shapes_from_table(table, ndim=2)
    assert shapes[1].tolist() == [[6, 5], [6, 7], [8, 7], [8, 5]]
    assert boxes_csv_text(table_from_shapes(shapes, {"spine_id": [1, 2], "score": [0.6, 0.7]})) == \
        boxes_csv_text(table)
    with pytest.raises(SpineDetError, match="slices \\[0, 3\\] cannot be drawn in 2D"):
        shapes_from_table(BoxTable.from_rows([1, 2], [0, 3], np.ones((2, 4)), [1, 1]), ndim=2)
    with pytest.raises(SpineDetError, match="2 values of 'score' for 3 shapes"):
        table_from_shapes(shapes + shapes[:1], {"spine_id": [1, 2, 3], "score": [1, 1]})


def test_centroids_are_the_spines_of_spine_run(detected):
    _, result = detected
    points, features = centroids_from_table(result.table)
    assert features["spine_id"].tolist() == [s.spine_id for s in result.spines] == [1, 2, 3]
    for point, spine in zip(points, result.spines):
        cx, cy, cz = spine.centroid_px
        np.testing.assert_allclose(point, [cz, cy, cx])
    assert features["z_first"].tolist() == [0, 2, 7] and features["z_last"].tolist() == [9, 6, 8]
    flat, _ = centroids_from_table(result.table, ndim=2)
    np.testing.assert_allclose(flat, points[:, 1:])


def test_voxel_size_from_a_layer_scale():
    unknown, notes = voxel_size_from_scale((1, 1, 1), ("pixel",) * 3, model_pixel_um=0.1)
    assert unknown == (None, None, None) and len(notes) == 1
    assert "unknown: assumed the model's 0.1 µm/px and a 0.5 µm z-step" in notes[0]
    assert voxel_size_from_scale((0.5, 0.1, 0.1)) == ((0.5, 0.1, 0.1), [])
    (z, y, x), _ = voxel_size_from_scale((500, 100, 100), ("nm", "nm", "nm"))
    assert (z, y, x) == pytest.approx((0.5, 0.1, 0.1))
    assert voxel_size_from_scale((0.2, 0.2)) == ((None, 0.2, 0.2), [])
    _, notes = voxel_size_from_scale((1, 0.12, 0.1))
    assert notes == ["pixels are 0.1 x 0.12 µm (x, y): used 0.1 µm/px for both"]
    with pytest.raises(SpineDetError, match="split channels"):
        detection_array(np.zeros((2, 3, 16, 16)))
    with pytest.raises(SpineDetError, match="RGB"):
        detection_array(np.zeros((16, 16, 3)), rgb=True)


# --- reader and writer through napari (no drawing) --------------------------------------------------------------


@pytest.fixture
def plugin():
    """The installed plugins, and the spinedet manifest (which an install registers through its entry point)."""
    import npe2

    manager = npe2.PluginManager.instance()
    manager.discover()  # napari's own reader and writers, as napari finds them at start-up
    if "spinedet" not in manager._manifests:
        manager.register(npe2.PluginManifest.from_file(MANIFEST))
    return "spinedet"


@needs_napari
def test_reader_gives_rectangles_in_their_slices_and_centroids(plugin, boxes_csv, detected):
    from napari.components import ViewerModel

    viewer = ViewerModel()
    shapes, points = viewer.open(boxes_csv, plugin=plugin)
    table = detected[1].table
    assert (shapes._type_string, points._type_string) == ("shapes", "points")
    assert shapes.name == "good boxes" and shapes.ndim == 3 and shapes.nshapes == len(table)
    assert set(shapes.shape_type) == {"rectangle"}
    for corners, z, box, spine_id, score in zip(shapes.data, table.z, table.boxes, table.spine_id, table.score):
        assert set(corners[:, 0]) == {z}
        np.testing.assert_allclose([corners[:, 2].min(), corners[:, 1].min(), corners[:, 2].max(),
                                    corners[:, 1].max()], box, atol=1e-4)
    assert shapes.features["spine_id"].tolist() == table.spine_id.tolist()
    assert shapes.features["score"].tolist() == pytest.approx(table.score.tolist())
    assert shapes.features["slice"].tolist() == table.z.tolist()
    assert points.data.shape == (3, 3) and points.features["spine_id"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(points.data[:, 0], [4.5, 4.0, 7.5])  # middle of slices 0-9, 2-6, 7-8


@needs_napari
def test_reader_refuses_other_files(plugin, tmp_path):
    from spinedet.napari.io import get_reader, read_boxes

    assert get_reader(str(tmp_path / "stack.tif")) is None
    assert get_reader(str(tmp_path / "x_spines.csv")) is None
    bad = tmp_path / "bad_boxes.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(SpineDetError, match="bad_boxes.csv: unknown CSV columns a,b"):
        read_boxes(str(bad))


@needs_napari
def test_writer_saves_the_corrected_table(plugin, boxes_csv, tmp_path):
    import napari
    from napari.components import ViewerModel

    viewer = ViewerModel()
    shapes, _ = viewer.open(boxes_csv, plugin=plugin)
    unedited = tmp_path / "unedited_boxes.csv"
    napari.save_layers(str(unedited), [shapes], plugin=plugin)
    assert unedited.read_text() == boxes_csv.read_text()  # exact round trip

    rows = boxes_csv.read_text().splitlines()
    deleted, moved = 3, 5  # data rows (in file order, which is the layer's)
    shapes.selected_data = {deleted - 1}
    shapes.remove_selected()
    data = shapes.data
    data[moved - 2] = data[moved - 2] + np.array([0, 4.0, -3.0], dtype=data[moved - 2].dtype)  # 4 px down, 3 left
    shapes.data = data
    assert shapes.nshapes == len(rows) - 2
    corrected = tmp_path / "corrected_boxes.csv"
    # as napari's Save dialog with the file type "spinedet boxes (*.csv)"
    assert napari.save_layers(str(corrected), [shapes], plugin=plugin) == [str(corrected)]
    new_rows = corrected.read_text().splitlines()
    spine_id, z, x0, y0, x1, y1, score = rows[moved].split(",")
    expected = rows[:deleted] + rows[deleted + 1:]
    expected[moved - 1] = ",".join([spine_id, z, f"{float(x0) - 3:.2f}", f"{float(y0) + 4:.2f}",
                                    f"{float(x1) - 3:.2f}", f"{float(y1) + 4:.2f}", score])
    assert new_rows == expected
    assert len(read_box_table(corrected)) == len(rows) - 2
    other = tmp_path / "annotations.csv"  # any other .csv name: napari's own shapes table, not ours
    assert napari.save_layers(str(other), [shapes], plugin=plugin) == [str(other)]
    assert other.read_text().splitlines()[0].startswith("index,shape-type,vertex-index")


@needs_napari
def test_writer_refuses_a_non_csv_and_writes_nothing(tmp_path):
    from spinedet.napari.io import write_boxes

    with pytest.raises(SpineDetError, match="boxes.txt: a box table is a .csv file"):
        write_boxes(str(tmp_path / "boxes.txt"), [np.zeros((4, 3))], {"features": {"spine_id": [1], "score": [1]}})
    assert list(tmp_path.iterdir()) == []


# --- the widget (Qt, no drawing) --------------------------------------------------------------------------------


def _run_widget(qtbot, widget):
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    return worker


@pytest.fixture
def notifications(monkeypatch):
    """The messages the plugin shows, as (kind, text)."""
    import napari.utils.notifications as notes

    shown = []
    monkeypatch.setattr(notes, "show_info", lambda text: shown.append(("info", text)))
    monkeypatch.setattr(notes, "show_error", lambda text: shown.append(("error", text)))
    return shown


@needs_napari
def test_widget_detects_in_the_image_layer_and_saves_a_corrected_table(qtbot, blob_model, detected, tmp_path,
                                                                        notifications):
    from napari.components import ViewerModel

    from spinedet.napari.io import write_boxes
    from spinedet.napari.widget import DetectWidget

    stack, result = detected
    viewer = ViewerModel()
    image = viewer.add_image(stack, name="good", scale=VOXEL, translate=(0, 5, 5))
    widget = DetectWidget(viewer)
    assert widget.image.value is image
    widget.model.value = blob_model
    _run_widget(qtbot, widget)
    shapes, points = viewer.layers["good boxes"], viewer.layers["good spines"]
    assert tuple(shapes.scale) == tuple(points.scale) == VOXEL and tuple(shapes.translate) == (0, 5, 5)
    assert widget.status.value.startswith("3 spines in good (3D tracking,")
    assert notifications == []  # the scale gave the voxel size: nothing assumed
    # what the widget found is what spine-run finds, and saving it gives spine-run's table
    out = tmp_path / "good_boxes.csv"
    write_boxes(str(out), shapes.data, {"features": shapes.features})
    assert out.read_text() == boxes_csv_text(result.table)
    shapes.selected_data = {0}
    shapes.remove_selected()
    write_boxes(str(out), shapes.data, {"features": shapes.features})
    assert out.read_text().splitlines() == boxes_csv_text(result.table).splitlines()[:1] + \
        boxes_csv_text(result.table).splitlines()[2:]


@needs_napari
def test_widget_scale_one_is_unknown_and_mip_gives_2d_layers(qtbot, blob_model, detected, notifications):
    from napari.components import ViewerModel

    from spinedet.napari.widget import DetectWidget

    stack, _ = detected
    viewer = ViewerModel()
    viewer.add_image(stack, name="plain")
    widget = DetectWidget(viewer)
    widget.model.value = blob_model
    widget.mip.value = True
    _run_widget(qtbot, widget)
    shapes = viewer.layers["plain boxes"]
    assert shapes.ndim == 2 and viewer.layers["plain spines"].ndim == 2
    expected = SpineDetector(blob_model).detect(stack, mip=True).table
    np.testing.assert_allclose(np.sort(np.array([s.min(0) for s in shapes.data]), 0),
                               np.sort(expected.boxes[:, [1, 0]], 0), atol=1e-3)
    assert [kind for kind, _ in notifications] == ["info"]
    assert "voxel size is unknown: assumed the model's 0.1 µm/px" in notifications[0][1]
    assert widget.status.value.startswith("3 spines in plain (maximum projection,")


@needs_napari
def test_widget_errors_are_one_line_notifications(qtbot, blob_model, notifications):
    from napari.components import ViewerModel

    from spinedet.napari.widget import DetectWidget

    viewer = ViewerModel()
    widget = DetectWidget(viewer)
    assert widget.run() is None
    viewer.add_image(np.zeros((2, 3, 32, 32), np.uint16), name="hyper")
    widget.model.value = blob_model
    assert widget.run() is None
    viewer.add_image(np.full((3, 64, 64), 7, np.uint16), name="blank")
    widget.image.value = viewer.layers["blank"]
    _run_widget(qtbot, widget)  # fails in the worker
    assert [kind for kind, _ in notifications] == ["error"] * 3
    texts = [text for _, text in notifications]
    assert texts[0] == "spinedet: no image layer to detect in: open a stack first"
    assert texts[1].startswith("spinedet: hyper: a layer of shape (2, 3, 32, 32): spinedet needs")
    assert texts[2] == "spinedet: blank: image is blank: every pixel is 7"
    assert all("\n" not in t and "Traceback" not in t for t in texts)
    assert [layer.name for layer in viewer.layers] == ["hyper", "blank"]


@needs_napari
def test_widget_runs_the_shipped_model_by_default(qtbot, notifications):
    from napari.components import ViewerModel

    from spinedet.napari.widget import DetectWidget
    from spinedet.runtime.detector import default_model_path
    from spinedet.training.synth.stack import make_stack

    synth = make_stack(seed=3, shape=(4, 256, 256))
    viewer = ViewerModel()
    viewer.add_image(synth.image, name="synth", scale=synth.voxel_size)
    widget = DetectWidget(viewer)
    assert widget.model_path() == default_model_path("cpu")
    card_threshold = SpineDetector().score_threshold
    assert widget.score_threshold.value == pytest.approx(card_threshold)
    assert widget.shaft_check.value  # the shipped card asks for the shaft check
    _run_widget(qtbot, widget)
    expected = SpineDetector().detect(synth.image, voxel_size=synth.voxel_size).table
    shapes = viewer.layers["synth boxes"]
    assert len(expected) > 0 and shapes.nshapes == len(expected)
    assert shapes.features["spine_id"].tolist() == expected.spine_id.tolist()
    assert notifications == []
    assert widget._detector().shaft_distance_um == 1.0
    widget.shaft_check.value = False  # unchecked: spine-run --no-shaft-check
    assert widget._detector().shaft_distance_um is None
    _run_widget(qtbot, widget)
    unchecked = SpineDetector(shaft_distance_um=float("inf")).detect(synth.image, voxel_size=synth.voxel_size)
    assert widget.status.value.startswith(f"{len(unchecked.spines)} spine")


# --- drawing: a real viewer (OpenGL) -----------------------------------------------------------------------------


@pytest.fixture
def gl_viewer(request, qapp, plugin):
    """A napari Viewer with its canvas; skips where Qt has no OpenGL context (before napari's fixture is set up,
    whose teardown expects the test to have run)."""
    from qtpy.QtGui import QOffscreenSurface, QOpenGLContext

    context, surface = QOpenGLContext(), QOffscreenSurface()
    surface.create()
    if not (context.create() and context.makeCurrent(surface)):
        pytest.skip("no OpenGL context for napari's canvas (Qt's offscreen platform has one only with an X "
                    "display): run under xvfb-run")
    context.doneCurrent()
    return request.getfixturevalue("make_napari_viewer")()


def _canvas_pixels(viewer) -> np.ndarray:
    """What the canvas shows, ``(H, W, 4)`` uint8, drawn by vispy into its own framebuffer.

    (``viewer.screenshot`` reads Qt's widget framebuffer, which Qt's offscreen platform leaves unsized: there
    it returns a black picture.)
    """
    return np.asarray(viewer.window._qt_viewer.canvas._scene_canvas.render())


def _yellow(rgb):
    r, g, b = (rgb[..., k].astype(int) for k in range(3))
    return (r > 180) & (g > 180) & (b < 100)


@needs_napari
def test_screenshot_draws_the_boxes_of_the_shown_slice_where_they_are(gl_viewer, tmp_path, plugin):
    table = BoxTable.from_rows([1, 1, 2, 3], [1, 2, 1, 3],
                               [[10, 12, 30, 28], [11, 12, 31, 28], [60, 70, 100, 90], [40, 40, 56, 56]],
                               [0.9, 0.8, 0.7, 0.95])
    path = tmp_path / "drawn_boxes.csv"
    path.write_text(boxes_csv_text(table))
    viewer = gl_viewer
    viewer.add_image(np.full((5, 120, 128), 60, np.uint8), contrast_limits=(0, 255), name="grey")
    viewer.open(path, plugin=plugin)
    viewer.layers["drawn boxes"].text.visible = False
    viewer.layers["drawn spines"].visible = False
    viewer.reset_view()
    getattr(viewer, "scene", viewer).camera.zoom *= 0.6  # the whole image in the picture, whatever size the canvas has off screen
    for z in (1, 3):
        viewer.dims.set_current_step(0, z)
        pixels = _canvas_pixels(viewer)[..., :3]
        grey = np.all(np.abs(pixels.astype(int) - 60) <= 2, axis=-1)
        rows, cols = np.nonzero(grey | _yellow(pixels))
        top, left = rows.min(), cols.min()
        px = (cols.max() - left + 1) / 128  # canvas pixels per image pixel
        assert (rows.max() - top + 1) / 120 == pytest.approx(px, rel=0.02)

        def canvas(x, y):  # image pixel coordinates -> canvas (row, col); pixel centres at integers
            return int(round(top + (y + 0.5) * px)), int(round(left + (x + 0.5) * px))

        yellow = _yellow(pixels)
        near_an_edge = np.zeros_like(yellow)
        margin = int(np.ceil(px)) + 1
        for x0, y0, x1, y1 in table.boxes[table.z == z]:
            (r0, c0), (r1, c1) = canvas(x0, y0), canvas(x1, y1)
            for r, c in [((r0 + r1) // 2, c0), ((r0 + r1) // 2, c1), (r0, (c0 + c1) // 2), (r1, (c0 + c1) // 2)]:
                assert yellow[r - margin:r + margin + 1, c - margin:c + margin + 1].any(), (z, r, c)
            inside = (slice(r0 + margin, r1 - margin), slice(c0 + margin, c1 - margin))
            assert not yellow[inside].any()  # the edge only, no fill
            outer = np.zeros_like(yellow)
            outer[r0 - margin:r1 + margin + 1, c0 - margin:c1 + margin + 1] = True
            near_an_edge |= outer
        assert yellow.sum() > 4 * 20 * px  # drawn, not a few stray pixels
        assert not (yellow & ~near_an_edge).any()  # nothing yellow elsewhere (boxes of other slices)


@needs_napari
def test_dock_widget_from_the_manifest_runs(gl_viewer, qtbot, blob_model, detected):
    viewer = gl_viewer
    stack, result = detected
    viewer.add_image(stack, name="good", scale=VOXEL)
    _, widget = viewer.window.add_plugin_dock_widget("spinedet", "Detect spines")
    widget.model.value = blob_model
    _run_widget(qtbot, widget)
    assert viewer.layers["good boxes"].nshapes == len(result.table)
