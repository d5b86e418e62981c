import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from spinedet.runtime import files
from spinedet.runtime.cli import run_app
from spinedet.runtime.reports import SPINE_COLUMNS
from spinedet.runtime.tables import BOXES_COLUMNS, read_box_table
from test_detector import synthetic_stack


@pytest.fixture
def good_stack(good_stack_path):
    return good_stack_path


def run(*args):
    return CliRunner().invoke(run_app, [str(a) for a in args])


def test_spine_run_writes_tables_summary_and_overlay(good_stack, blob_model, tmp_path):
    out = tmp_path / "out"
    result = run(good_stack, "--model", blob_model, "--out", out, "--overlay")
    assert result.exit_code == 0, result.output
    boxes_csv = (out / "good_boxes.csv").read_text().splitlines()
    assert boxes_csv[0] == ",".join(BOXES_COLUMNS)
    assert len(boxes_csv) == 1 + 16
    table = read_box_table(out / "good_boxes.csv")
    assert sorted(set(table.spine_id.tolist())) == [1, 2, 3]
    spines = (out / "good_spines.csv").read_text().splitlines()
    assert spines[0] == ",".join(SPINE_COLUMNS) and len(spines) == 4
    rows = [dict(zip(SPINE_COLUMNS, line.split(","))) for line in spines[1:]]
    for row in rows:  # a spine's best and mean box score, as in the boxes table
        scores = table.score[table.spine_id == int(row["spine_id"])]
        assert float(row["max_score"]) == pytest.approx(scores.max(), abs=1e-4)
        assert float(row["mean_score"]) == pytest.approx(scores.mean(), abs=1e-4)
    summary = json.loads((out / "good_summary.json").read_text())
    assert summary["n_spines"] == 3 and summary["voxel_size_um"]["z"] == pytest.approx(0.5)
    assert summary["voxel_size_um"]["source"] == "ImageJ metadata"
    overlay = imagecodecs.png_decode((out / "good_overlay.png").read_bytes())
    assert overlay.shape == (1024, 1024, 3)  # a 128 px image is enlarged 8x to stay legible
    assert (overlay == [255, 220, 0]).all(axis=2).sum() > 50  # boxes and numbers are drawn
    assert "good.tif: 3 spines in 10 slices" in result.stderr


def test_2d_image_gives_z_zero(blob_model, tmp_path):
    image = synthetic_stack()[0]
    path = tmp_path / "slice.png"
    path.write_bytes(imagecodecs.png_encode((image // 8).astype(np.uint8)))
    result = run(path, "--model", blob_model, "--out", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert read_box_table(tmp_path / "slice_boxes.csv").z.tolist() == [0]


def test_bad_inputs_fail_alone_with_one_line_each(good_stack, blob_model, tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("hello")
    blank = tmp_path / "blank.tif"
    tifffile.imwrite(blank, np.zeros((3, 64, 64), np.uint8), photometric="minisblack")
    padded = tmp_path / "padded.tif"
    tifffile.imwrite(padded, np.pad(np.ones((3, 60, 60), np.float32), ((0, 0), (4, 0), (0, 0)),
                                    constant_values=np.nan), imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "out"
    result = run(text, good_stack, tmp_path / "missing.tif", blank, padded, "--model", blob_model, "--out", out,
                 "-q")
    assert result.exit_code == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("spine-run: error: ") for line in errors)
    assert "notes.tif: not a TIFF or PNG" in errors[0]
    assert "missing.tif: no such file" in errors[1]
    assert "blank.tif: image is blank" in errors[2]
    assert "padded.tif: 720 of 11,520 pixels read are NaN or infinite" in errors[3]
    assert sorted(p.name for p in out.iterdir()) == ["batch_summary.csv", "good_boxes.csv", "good_spines.csv",
                                                     "good_summary.json"]
    rows = list(csv.DictReader((out / "batch_summary.csv").open()))  # a row per input, in input order
    assert [r["file"] for r in rows] == [str(p) for p in (text, good_stack, tmp_path / "missing.tif", blank, padded)]
    assert [r["error"] for r in rows] == [errors[0].removeprefix("spine-run: error: "), "",
                                          *(e.removeprefix("spine-run: error: ") for e in errors[1:])]
    assert (rows[1]["slices"], rows[1]["spines"], rows[1]["z_step_um"]) == ("10", "3", "0.5")


def test_json_prints_one_object_per_run_and_nothing_else(good_stack, blob_model, tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("hello")
    out = tmp_path / "out"
    result = run(text, good_stack, "--model", blob_model, "--out", out, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)  # stdout holds the JSON object alone; lines for people go to stderr
    assert report["out"] == str(out)
    bad, good = report["stacks"]
    assert bad["file"] == str(text) and "not a TIFF or PNG" in bad["error"] and bad["spines"] is None
    assert good["error"] is None and (good["slices"], good["spines"], good["z_step_um"]) == (10, 3, 0.5)
    assert good["spines_csv"] == str(out / "good_spines.csv")
    assert len(list(csv.DictReader(open(good["spines_csv"])))) == 3
    assert "spine-run: error: " in result.stderr


def test_bad_model_stops_before_any_input(good_stack, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x00garbage")
    (tmp_path / "m.json").write_text("{}")
    result = run(good_stack, "--model", model, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "m.onnx: not a usable ONNX model" in result.stderr
    assert not (tmp_path / "out").exists()


def test_failed_write_leaves_no_outputs(good_stack, blob_model, tmp_path, monkeypatch):
    monkeypatch.setattr(files.os, "fdopen", _fail_on_second(files.os.fdopen))  # the disk fills up mid-way
    out = tmp_path / "out"
    result = run(good_stack, "--model", blob_model, "--out", out)
    assert result.exit_code == 1
    assert "good_spines.csv: cannot write output" in result.stderr
    assert list(out.iterdir()) == []  # no half-written files, no temporaries


def test_write_all_is_all_or_nothing(tmp_path, monkeypatch):
    (tmp_path / "a.csv").write_text("old a")
    monkeypatch.setattr(files.os, "fdopen", _fail_on_second(files.os.fdopen))
    with pytest.raises(Exception):
        files.write_all({tmp_path / "a.csv": "new a", tmp_path / "b.csv": "new b"})
    assert (tmp_path / "a.csv").read_text() == "old a"  # not replaced: the group failed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]


def _fail_on_second(fdopen):
    count = [0]

    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] == 2:
            raise OSError(28, "disk full")
        return fdopen(*args, **kwargs)
    return wrapped


def test_same_stem_twice_does_not_overwrite(good_stack, blob_model, tmp_path):
    other = tmp_path / "again"
    other.mkdir()
    copy = other / "good.tif"
    copy.write_bytes(good_stack.read_bytes())
    result = run(good_stack, copy, "--model", blob_model, "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0
    assert (tmp_path / "out" / "good-2_boxes.csv").exists()


def test_help_runs_as_installed_command_without_traceback(tmp_path):
    bin_dir = Path(sys.executable).parent
    for tool in ("spine-run", "spine-eval"):
        exe = bin_dir / tool
        if not exe.exists():
            pytest.skip(f"{tool} is not installed next to {sys.executable}")
        done = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "Usage" in done.stdout
    done = subprocess.run([str(bin_dir / "spine-run"), str(tmp_path / "nothing.tif"), "--model",
                           str(tmp_path / "none.onnx")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0


def test_outputs_get_ordinary_file_permissions(tmp_path):
    files.write_all({tmp_path / "a.csv": "x"})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.csv").stat().st_mode & 0o777 == 0o666 & ~umask


def test_absurd_pixel_size_is_refused_at_once_naming_where_it_came_from(blob_model, tmp_path):
    """ImageJ metadata of 5 µm/px would resample each slice 50x (minutes, then gigabytes): refused before any work."""
    path = tmp_path / "coarse.tif"
    tifffile.imwrite(path, synthetic_stack(), imagej=True, resolution=(0.2, 0.2),
                     metadata={"spacing": 0.5, "unit": "um", "axes": "ZYX"})
    result = run(path, "--model", blob_model, "--out", tmp_path / "out")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("spine-run: error: ")
    assert "pixel size 5 µm (ImageJ metadata)" in line and "50x to 6400x6400 px" in line and "--pixel-size" in line
    result = run(path, "--model", blob_model, "--out", tmp_path / "out", "--pixel-size", "50")
    assert "pixel size 50 µm (ImageJ metadata + command line)" in result.stderr and result.exit_code == 1
    result = run(path, "--model", blob_model, "--out", tmp_path / "out", "--pixel-size", "0.1", "-q")
    assert result.exit_code == 0 and result.stderr == ""
    assert not (tmp_path / "out" / "coarse_summary.json").read_text().count("assumed")


def test_library_refuses_an_absurd_voxel_size_before_inference(blob_model, monkeypatch):
    from spinedet.runtime import SpineDetError, SpineDetector

    detector = SpineDetector(blob_model)
    monkeypatch.setattr(detector.backend, "run", lambda batch: pytest.fail("inference ran"))
    with pytest.raises(SpineDetError, match="pixel size 0.0001 µm .given."):
        detector.detect(synthetic_stack(), voxel_size=(0.5, 0.0001, 0.0001))
    with pytest.raises(SpineDetError, match="z-step 500 µm"):
        detector.detect(synthetic_stack(), voxel_size=(500, 0.1, 0.1))
    stream = detector.stream(voxel_size=(0.5, 5.0, 5.0))
    with pytest.raises(SpineDetError, match="pixel size 5 µm"):
        stream.add_slice(synthetic_stack()[0])


def test_unknown_pixel_size_is_said_on_stderr_and_in_the_summary(blob_model, tmp_path):
    image = synthetic_stack()[0]
    png = tmp_path / "slice.png"
    png.write_bytes(imagecodecs.png_encode((image // 8).astype(np.uint8)))
    printed = tmp_path / "printed.tif"  # a TIFF whose resolution tag is a 300 dpi print setting
    tifffile.imwrite(printed, synthetic_stack(), resolution=(300, 300), resolutionunit="INCH")
    result = run(png, printed, "--model", blob_model, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("spine-run: note: ")]
    assert len(notes) == 2
    assert "slice.png: no pixel size in the file: assumed the model's 0.1 µm/px" in notes[0]
    assert "printed.tif: no pixel size in the file (its resolution tag, 300 pixels per inch, is a print" in notes[1]
    summary = json.loads((tmp_path / "out" / "printed_summary.json").read_text())
    assert summary["voxel_size_um"]["x"] is None and "assumed the model's 0.1" in summary["notes"][0]
    assert summary["mode"] == "3D tracking"
    assert json.loads((tmp_path / "out" / "slice_summary.json").read_text())["mode"] == "single image"
    quiet = run(png, "--model", blob_model, "--out", tmp_path / "q", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""
