"""The synthetic stack generator: ground truth agrees with what was rendered."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from spinedet.runtime import files
from spinedet.runtime.tables import read_box_table
from spinedet.training.synth import SynthParams, distractor_boxes, main, make_stack, render_alone, write_stack
from spinedet.training.synth.cli import app

# bright enough that most spines in focus pass the noise test; 0.1 µm pixels, 0.5 µm slices
BRIGHT = dict(signal_photons=300.0, pixel_size_um=0.1, z_step_um=0.5, spines_per_um=1.0, dendrite_count=2)
TOL = 1e-3          # relative slack for float ties at the thresholds


@pytest.fixture(scope="module")
def stack():
    return make_stack(3, (10, 128, 128), **BRIGHT)


def _bbox(mask):
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return None
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=float)


def _inside(spine, shape_um, margin_um):
    """True if all of the spine lies ``margin_um`` inside the field in x and y."""
    points = [spine.head.centre] + ([] if spine.neck is None else list(spine.neck.points))
    yx = np.array(points)[:, 1:]
    r = spine.head.radius
    return bool(np.all(yx - r > margin_um) and np.all(yx + r < np.array(shape_um) - margin_um))


def test_ground_truth_boxes_enclose_the_spine_as_rendered(stack):
    """Re-render every spine alone (noise-free) and re-apply the documented rule."""
    p, floor = stack.params, stack.detection_floor
    z_slices, height, width = stack.image.shape
    field_um = (height * p.pixel_size_um, width * p.pixel_size_um)
    shafts = render_alone(stack, stack.scene.dendrites)
    checked_rows = checked_spines = 0
    for spine in stack.spines:
        if not _inside(spine, field_um, 1.0):
            continue          # parts outside the image would change the in-slice peaks
        checked_spines += 1
        head = render_alone(stack, [spine.head])
        neck = render_alone(stack, [spine.neck]) if spine.neck is not None else None
        mine = stack.table.spine_id == spine.spine_id
        boxed = dict(zip(stack.table.z[mine].tolist(), stack.table.boxes[mine]))
        assert head.max() <= spine.head_peak * (1 + TOL)
        for z in range(z_slices):
            peak = float(head[z].max())
            shaft_there = float(shafts[z].flat[np.argmax(head[z])])
            if z not in boxed:
                clearly_visible = (peak > p.axial_fraction * spine.head_peak * (1 + TOL)
                                   and peak > floor[z] * (1 + TOL) and shaft_there < peak * (1 - TOL))
                assert not clearly_visible, (spine.spine_id, z)
                continue
            assert peak >= p.axial_fraction * spine.head_peak * (1 - TOL)
            assert peak >= floor[z] * (1 - TOL)
            assert shaft_there <= peak * (1 + TOL)
            inner = head[z] >= (p.edge_fraction + TOL) * peak
            outer = head[z] >= (p.edge_fraction - TOL) * peak
            if neck is not None:
                neck_peak = float(neck[z].max())
                if neck_peak > p.axial_fraction * spine.neck_peak * (1 + TOL):
                    inner |= neck[z] >= (p.edge_fraction + TOL) * neck_peak
                if neck_peak >= p.axial_fraction * spine.neck_peak * (1 - TOL):
                    outer |= neck[z] >= (p.edge_fraction - TOL) * neck_peak
            box, small, large = boxed[z], _bbox(inner), _bbox(outer)
            # the box holds every pixel above the rule and nothing beyond its loosest reading
            assert np.all(box[:2] <= small[:2]) and np.all(box[2:] >= small[2:]), (spine.spine_id, z)
            assert np.all(box[:2] >= large[:2]) and np.all(box[2:] <= large[2:]), (spine.spine_id, z)
            checked_rows += 1
    assert checked_spines >= 5 and checked_rows >= 10, (checked_spines, checked_rows)


def test_boxes_lie_in_the_image_and_belong_to_their_spine(stack):
    z_slices, height, width = stack.image.shape
    b, t = stack.table.boxes, stack.table
    assert len(t) > 0
    assert np.all(b[:, 0] >= 0) and np.all(b[:, 1] >= 0) and np.all(b[:, 2] <= width) and np.all(b[:, 3] <= height)
    assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
    assert np.all((t.z >= 0) & (t.z < z_slices)) and np.all(t.score == 1.0) and set(t.stack) == {""}
    px = stack.voxel_size[1]
    by_id = {s.spine_id: s for s in stack.spines}
    for spine_id, box in zip(t.spine_id, b):
        cy, cx = by_id[spine_id].head.centre[1:] / px        # head centre in pixels
        if 0 <= cx < width and 0 <= cy < height:
            assert box[0] - 1 <= cx <= box[2] + 1 and box[1] - 1 <= cy <= box[3] + 1
    # one row per spine and slice, rows in stack.boxes_at(z) agree with the table
    keys = list(zip(t.spine_id.tolist(), t.z.tolist()))
    assert len(keys) == len(set(keys))
    assert sum(len(stack.boxes_at(z)) for z in range(z_slices)) == len(t)
    assert stack.boxes_at(z_slices + 5).shape == (0, 4)


def test_box_areas_are_spine_sized():
    """Areas in µm² like the paper's (most 1-7 µm², none near its 20 µm² cap)."""
    areas = []
    for seed in range(2):
        s = make_stack(seed, (12, 256, 256), pixel_size_um=0.1, signal_photons=200.0)
        b = s.table.boxes
        areas.extend((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) * 0.1 ** 2)
    assert len(areas) >= 20
    assert 0.7 <= np.median(areas) <= 7.0
    assert max(areas) <= 20.0


def test_distractors_get_no_boxes():
    s = make_stack(11, (8, 96, 96), spines_per_um=0.0, axon_count=3, puncta_per_100um2=1.5,
                   terminal_bouton_fraction=0.5, signal_photons=300.0, pixel_size_um=0.1)
    assert len(s.table) == 0 and s.spines == []
    assert len(s.scene.distractors()) > 3
    assert s.image.max() > 4 * np.median(s.image)         # there is bright structure to ignore


def test_distractor_boxes_sit_on_bright_look_alikes():
    s = make_stack(11, (8, 96, 96), spines_per_um=0.0, axon_count=3, puncta_per_100um2=1.5,
                   terminal_bouton_fraction=0.5, signal_photons=300.0, pixel_size_um=0.1)
    per_slice = distractor_boxes(s)
    assert len(per_slice) == 8 and sum(len(b) for b in per_slice) > 0
    balls = render_alone(s, s.scene.boutons + s.scene.puncta)       # noise-free dye of the look-alikes
    for z, boxes in enumerate(per_slice):
        assert boxes.dtype == np.float32 and boxes.shape[1:] == (4,)
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 96).all() and (boxes[:, [1, 3]] <= 96).all()
        covered = np.zeros((96, 96), bool)
        for x0, y0, x1, y1 in boxes:
            covered[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
            assert balls[z, int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))].max() > 0   # on a ball
        # every bright look-alike pixel of the slice is in a box
        assert covered[balls[z] > 0.5 * balls.max()].all()
    # a slice far from every ball lists none of them
    far = make_stack(11, (8, 96, 96), spines_per_um=0.0, axon_count=0, puncta_per_100um2=0.0)
    assert all(len(b) == 0 for b in distractor_boxes(far))


def test_pixel_size_changes_the_image_consistently():
    """The same scene at half the pixel size: the same spines, the same boxes in µm."""
    settings = dict(BRIGHT, z_step_um=0.5)
    coarse = make_stack(5, (6, 96, 96), **dict(settings, pixel_size_um=0.1))
    fine = make_stack(5, (6, 192, 192), **dict(settings, pixel_size_um=0.05))
    assert [s.spine_id for s in coarse.spines] == [s.spine_id for s in fine.spines]
    for a, b in zip(coarse.spines, fine.spines):
        np.testing.assert_allclose(a.head.centre, b.head.centre)
    rows_c = {(i, z): box * 0.1 for i, z, box in zip(coarse.table.spine_id, coarse.table.z, coarse.table.boxes)}
    rows_f = {(i, z): box * 0.05 for i, z, box in zip(fine.table.spine_id, fine.table.z, fine.table.boxes)}
    common = set(rows_c) & set(rows_f)
    assert len(rows_c) >= 5
    assert len(common) >= 0.8 * max(len(rows_c), len(rows_f))
    worst = max(np.abs(rows_c[k] - rows_f[k]).max() for k in common)
    assert worst <= 0.25, worst          # µm: within about two coarse pixels


def test_the_generator_output_is_pinned():
    """One small stack, bit for bit: its image and ground-truth table (sha256).

    Pinned on the single-file generator before it was split into modules, so
    any change in what a seed produces (draw order, rendering, noise, the
    visibility rule) shows here.  Computed with numpy 2.4 on x86-64; another
    platform's float rounding (BLAS, SIMD exp) could in principle move a
    pixel by one count and fail this without the generator having changed.
    """
    s = make_stack(5, (6, 96, 96))
    t = s.table
    assert (s.image.dtype, s.image.shape) == (np.uint8, (6, 96, 96))
    assert s.voxel_size == (0.8655585528155456, 0.1344002338996304, 0.1344002338996304)
    assert (len(s.spines), len(set(t.spine_id.tolist())), len(t)) == (21, 11, 20)
    assert hashlib.sha256(s.image.tobytes()).hexdigest() == \
        "ec8776e3692072e3aeedc7d20f7b3c68ac897a398b14571e5badd20753b9b859"
    table = t.spine_id.astype("<i8").tobytes() + t.z.astype("<i8").tobytes() + t.boxes.astype("<f8").tobytes()
    assert hashlib.sha256(table).hexdigest() == "5ce3a6f7863b383ddcb844e844e43ca32aa0f05925627be4ad585494187fea34"


def test_same_seed_same_stack():
    a = make_stack(7, (6, 64, 64))
    b = make_stack(7, (6, 64, 64))
    c = make_stack(8, (6, 64, 64))
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.table.boxes, b.table.boxes) and np.array_equal(a.table.z, b.table.z)
    assert a.voxel_size == b.voxel_size
    assert not np.array_equal(a.image, c.image)
    # fixing one setting leaves the others as they were for that seed
    d = make_stack(7, (6, 64, 64), bit_depth=8 if a.params.bit_depth == 16 else 16)
    assert d.params.pixel_size_um == a.params.pixel_size_um and d.params.z_step_um == a.params.z_step_um


def test_bit_depth_and_parameter_ranges():
    assert make_stack(1, (3, 48, 48), bit_depth=8).image.dtype == np.uint8
    s16 = make_stack(1, (3, 48, 48), bit_depth=16)
    assert s16.image.dtype == np.uint16 and s16.image.max() <= 2 ** s16.params.adc_bits - 1
    rng = np.random.default_rng(0)
    draws = [SynthParams().sample(rng) for _ in range(200)]
    px = [d.pixel_size_um for d in draws]
    dz = [d.z_step_um for d in draws]
    assert 0.07 <= min(px) < 0.08 and 0.14 < max(px) <= 0.15
    assert 0.3 <= min(dz) < 0.4 and 0.9 < max(dz) <= 1.0
    assert all(d.psf_sigma_z_um > d.psf_sigma_xy_um for d in draws)
    with pytest.raises(ValueError, match="unknown"):
        make_stack(1, (3, 48, 48), pixel_size=0.1)


def test_written_tiff_keeps_the_voxel_size(tmp_path, stack):
    paths = write_stack(stack, tmp_path, "s1")
    assert sorted(p.name for p in paths) == ["s1.tif", "s1_boxes.csv"]
    with tifffile.TiffFile(tmp_path / "s1.tif") as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["spacing"] == pytest.approx(stack.voxel_size[0])
        assert tif.imagej_metadata["unit"] == "um"
        num, den = tif.pages[0].tags["XResolution"].value
        assert den / num == pytest.approx(stack.voxel_size[2], rel=1e-5)
        assert np.array_equal(tif.asarray(), stack.image)
    table = read_box_table(tmp_path / "s1_boxes.csv")
    order = np.lexsort((stack.table.z, stack.table.spine_id))
    np.testing.assert_allclose(table.boxes, stack.table.boxes[order], atol=0.006)
    assert np.array_equal(table.z, stack.table.z[order]) and np.all(table.score == 1.0)


def synth(*args):
    """``spine-synth ARGS`` in this process, with typer's runner (usage errors are one line only through main())."""
    return CliRunner().invoke(app, [str(a) for a in args])


# the per-stack line on stderr
REPORT = re.compile(r"^(?P<image>\S+\.tif): (?P<slices>\d+) slices?, [0-9.]+ µm/px, z-step [0-9.]+ µm, (?:8|16)-bit, "
                    r"signal \d+ photons/voxel; ground truth: (?P<spines>\d+) spines? in (?P<boxes>\d+) box(?:es)? "
                    r"\((?P<placed>\d+) spines? placed, (?P<never>\d+) never visible\)$")


def test_cli_writes_stacks(tmp_path):
    out = tmp_path / "out"
    result = synth("--out", out, "--count", "2", "--slices", "3", "--size", "48", "--seed", "4",
                   "--pixel-size", "0.12", "--z-step", "0.8", "--bit-depth", "8")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["synth_000.tif", "synth_000_boxes.csv", "synth_001.tif", "synth_001_boxes.csv"]
    with tifffile.TiffFile(out / "synth_001.tif") as tif:
        assert tif.asarray().shape == (3, 48, 48) and tif.asarray().dtype == np.uint8
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.8)
    # stack i is make_stack(default_rng([seed, i])) with the settings given
    again = make_stack(np.random.default_rng([4, 1]), (3, 48, 48), pixel_size_um=0.12, z_step_um=0.8, bit_depth=8)
    assert np.array_equal(tifffile.imread(out / "synth_001.tif"), again.image)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(REPORT.match(line) for line in lines), lines
    assert lines[0].startswith(f"{out / 'synth_000.tif'}: 3 slices, 0.120 µm/px, z-step 0.80 µm, 8-bit, ")


def test_cli_says_what_the_ground_truth_files_hold(tmp_path):
    """The spine count printed is the number of spine ids in the written _boxes.csv, not the spines placed."""
    out = tmp_path / "out"
    result = synth("--out", out, "--count", "3", "--slices", "6", "--size", "96", "--seed", "1", "--prefix", "s")
    assert result.exit_code == 0, result.output
    reports = [REPORT.match(line) for line in result.stderr.splitlines()]
    assert len(reports) == 3 and all(reports), result.stderr
    for i, report in enumerate(reports):
        assert report["image"] == str(out / f"s_{i:03d}.tif")
        table = read_box_table(out / f"s_{i:03d}_boxes.csv")
        assert int(report["spines"]) == len(set(table.spine_id.tolist()))
        assert int(report["boxes"]) == len(table)
        assert int(report["placed"]) == len(make_stack(np.random.default_rng([1, i]), (6, 96, 96)).spines)
        assert int(report["placed"]) - int(report["spines"]) == int(report["never"])
    # the case the old count hid: spines placed that no box names
    assert any(int(r["never"]) > 0 for r in reports)


def test_cli_json_lists_the_files_and_counts(tmp_path):
    out = tmp_path / "out"
    result = synth("--out", out, "--count", "2", "--slices", "4", "--size", "64", "--seed", "3", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    report = json.loads(result.stdout)              # one JSON object, nothing else on stdout
    assert report["out"] == str(out) and report["seed"] == 3 and len(report["stacks"]) == 2
    written = []
    for entry in report["stacks"]:
        image, truth = Path(entry["files"]["image"]), Path(entry["files"]["ground_truth"])
        written += [image.name, truth.name]
        table = read_box_table(truth)
        assert entry["spines"] == len(set(table.spine_id.tolist())) and entry["boxes"] == len(table)
        assert entry["spines_placed"] - entry["spines"] == entry["spines_never_visible"] >= 0
        assert entry["shape"] == list(tifffile.imread(image).shape) == [4, 64, 64]
        assert entry["bit_depth"] in (8, 16) and len(entry["voxel_size_um"]) == 3
    assert sorted(written) == sorted(p.name for p in out.iterdir())


def test_cli_writes_each_stack_all_or_nothing(tmp_path, monkeypatch):
    """The disk fills up while writing the second stack: the first stays, nothing of the second is left."""
    fdopen, opened = files.os.fdopen, []

    def failing(*args, **kwargs):
        opened.append(1)
        if len(opened) == 4:                        # the second stack's second file
            raise OSError(28, "disk full")
        return fdopen(*args, **kwargs)

    monkeypatch.setattr(files.os, "fdopen", failing)
    out = tmp_path / "out"
    result = synth("--out", out, "--count", "3", "--slices", "2", "--size", "32", "--json")
    assert result.exit_code == 2
    error = result.stderr.splitlines()[-1]
    assert error.startswith("spine-synth: error: ") and "synth_001_boxes.csv: cannot write output" in error
    assert "1 of 3 stacks were written before it" in error
    assert sorted(p.name for p in out.iterdir()) == ["synth_000.tif", "synth_000_boxes.csv"]
    assert result.stdout == ""


@pytest.mark.parametrize("args", [[], ["out"], ["--out", "out", "--bit-depth", "12"], ["--out", "out", "--size", "-3"],
                                  ["--out", "out", "--pixel-size", "abc"], ["--out", "out", "--size", "8"],
                                  ["--out", "out", "--count", "0"], ["--out", "out", "--pixel-size", "-0.1"],
                                  ["--out", "out", "--z-step", "nan"], ["--out", "out", "--seed", "-1"]])
def test_cli_errors_are_one_line(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["spine-synth", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("spine-synth: error:"), err
    assert captured.out == ""
    assert not (tmp_path / "out").exists()


def test_cli_exit_codes_from_a_shell(tmp_path):
    exe = Path(sys.executable).parent / "spine-synth"
    if not exe.exists():
        pytest.skip(f"spine-synth is not installed next to {sys.executable}")
    for command in ([str(exe)], [sys.executable, "-m", "spinedet.training.synth"]):
        done = subprocess.run(command + ["--out", str(tmp_path / "bad"), "--count", "0"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert done.stderr.startswith("spine-synth: error: ") and done.stdout == ""
    done = subprocess.run([str(exe), "--out", str(tmp_path / "ok"), "--slices", "2", "--size", "32", "--json", "-q"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert [s["files"]["image"] for s in json.loads(done.stdout)["stacks"]] == [str(tmp_path / "ok" / "synth_000.tif")]
