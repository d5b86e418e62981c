"""spine-run on many stacks: input expansion, output names, batch_summary.csv, and the Dask path (--workers)
writing what the serial run writes."""

import csv
import json
import os
import re
import subprocess
import sys
from importlib.util import find_spec

import imagecodecs
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from spinedet.runtime import batch
from spinedet.runtime.cli import run_app
from test_detector import synthetic_stack

needs_distributed = pytest.mark.skipif(find_spec("distributed") is None,
                                       reason="dask.distributed is not installed (pip install 'spinedet[dask]')")


def run(*args):
    return CliRunner().invoke(run_app, [str(a) for a in args])


def write_stack(path, slices=3):
    tifffile.imwrite(path, synthetic_stack()[:slices], imagej=True, resolution=(10, 10),
                     metadata={"spacing": 0.5, "unit": "um", "axes": "ZYX"})


def write_png(path, image):
    path.write_bytes(imagecodecs.png_encode((image // 8).astype(np.uint8)))


@pytest.fixture
def stack_folder(tmp_path):
    """6 stacks of 3 slices of 128x128 px, stack_3.tif truncated to 300 bytes."""
    folder = tmp_path / "stacks"
    folder.mkdir()
    for k in range(6):
        write_stack(folder / f"stack_{k}.tif")
    corrupt = folder / "stack_3.tif"
    corrupt.write_bytes(corrupt.read_bytes()[:300])
    return folder


def test_folder_expands_to_its_stacks_but_a_slice_folder_stays_one_stack(tmp_path):
    folder = tmp_path / "data"
    (folder / "cell").mkdir(parents=True)
    image = synthetic_stack()[0]
    for z in range(2):
        write_png(folder / "cell" / f"cell-{z:02d}.png", image)
    write_stack(folder / "b.tif")
    write_stack(folder / "a.TIFF")
    write_png(folder / "single.png", image)
    write_png(folder / "b_overlay.png", image)  # spine-run's own output
    write_stack(folder / ".hidden.tif")
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty").mkdir()
    assert batch.expand_inputs([folder]) == [folder / "a.TIFF", folder / "b.tif", folder / "cell",
                                             folder / "single.png"]
    assert batch.expand_inputs([folder / "cell", folder / "b.tif"]) == [folder / "cell", folder / "b.tif"]
    assert batch.expand_inputs([folder / "empty"]) == [folder / "empty"]  # open_stack will say it holds nothing

    # OME-Zarr folders and CZI files are stacks too, and numbers in names sort by value
    series = tmp_path / "series"
    (series / "day2.ome.zarr").mkdir(parents=True)
    (series / "day2.ome.zarr" / "zarr.json").write_text("{}")
    write_stack(series / "day10.tif")
    (series / "day1.czi").write_bytes(b"not read here")
    assert batch.expand_inputs([series]) == [series / "day1.czi", series / "day2.ome.zarr", series / "day10.tif"]
    assert batch.expand_inputs([series / "day2.ome.zarr"]) == [series / "day2.ome.zarr"]


def test_stems_are_given_in_input_order_before_any_run(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_stack(tmp_path / "a" / "good.tif")
    write_stack(tmp_path / "b" / "good.ome.tif")
    write_png(tmp_path / "b" / "good.png", synthetic_stack()[0])
    (tmp_path / "good.tif").write_text("text, not a stack")
    paths = [tmp_path / "good.tif", tmp_path / "a" / "good.tif", tmp_path / "missing.tif",
             tmp_path / "b" / "good.ome.tif", tmp_path / "b" / "good.png"]
    assert batch.assign_stems(paths) == ["good", "good", "missing", "good-2", "good-3"]


def test_serial_batch_summary_has_a_row_per_stack_and_one_stack_writes_none(stack_folder, blob_model, tmp_path):
    out = tmp_path / "out"
    result = run(stack_folder, "--model", blob_model, "--out", out, "-q")
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"spine-run: error: {stack_folder / 'stack_3.tif'}: file is truncated: image "
                                     "data needs 33136 bytes, the file has 300")
    rows = list(csv.DictReader((out / "batch_summary.csv").open()))
    assert list(rows[0]) == list(batch.BATCH_COLUMNS)
    assert [r["file"] for r in rows] == [str(stack_folder / f"stack_{k}.tif") for k in range(6)]
    good = [r for k, r in enumerate(rows) if k != 3]
    for row in good:
        summary = json.loads((out / f"{row['file'].split('/')[-1][:-4]}_summary.json").read_text())
        assert (int(row["slices"]), int(row["spines"])) == (summary["shape_zyx"][0], summary["n_spines"])
        assert (float(row["pixel_size_um"]), float(row["z_step_um"])) == (0.1, 0.5) and row["error"] == ""
    assert rows[3]["error"] == result.stderr.strip().removeprefix("spine-run: error: ")
    assert rows[3]["slices"] == rows[3]["spines"] == ""
    single = tmp_path / "single"
    assert run(stack_folder / "stack_0.tif", "--model", blob_model, "--out", single, "-q").exit_code == 0
    assert not (single / "batch_summary.csv").exists()


def _without_timing(folder):
    """Every output file's contents, with the summaries' ``seconds`` and the batch summary's seconds removed."""
    contents = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith("_summary.json"):
            summary = json.loads(path.read_text())
            assert set(summary.pop("seconds")) >= {"read", "infer"}
            contents[path.name] = summary
        elif path.name == batch.BATCH_SUMMARY:
            rows = list(csv.DictReader(path.open()))
            assert all(float(r.pop("seconds")) >= 0 for r in rows)
            contents[path.name] = rows
        else:
            contents[path.name] = path.read_bytes()
    return contents


@needs_distributed
def test_two_dask_workers_write_what_the_serial_run_writes(stack_folder, blob_model, tmp_path, monkeypatch):
    outcomes = []

    def spy(*args, **kwargs):
        outcomes.extend(run_dask(*args, **kwargs))
        return outcomes

    run_dask = batch.run_dask
    monkeypatch.setattr(batch, "run_dask", spy)
    common = ("--model", blob_model, "--overlay", "--roi", "--threads", "1")
    serial = run(stack_folder, "--out", tmp_path / "serial", *common)
    parallel = run(stack_folder, "--out", tmp_path / "parallel", "--workers", "2", *common)
    assert serial.exit_code == parallel.exit_code == 1
    assert len(outcomes) == 6  # the Dask path ran

    serial_files, parallel_files = _without_timing(tmp_path / "serial"), _without_timing(tmp_path / "parallel")
    assert len(serial_files) == 1 + 5 * 5  # batch summary; boxes, spines, summary, ROIs, overlay per good stack
    assert parallel_files == serial_files

    def lines(result, out):  # stderr lines, without the seconds and the output folder
        return sorted(re.sub(r"\(\d+\.\d s\)", "(s)", line).replace(str(out), "OUT")
                      for line in result.stderr.splitlines())
    assert lines(parallel, tmp_path / "parallel") == lines(serial, tmp_path / "serial")
    errors = [line for line in parallel.stderr.splitlines() if "error" in line]
    assert errors == [f"spine-run: error: {stack_folder / 'stack_3.tif'}: file is truncated: image data needs "
                      "33136 bytes, the file has 300"]

    # each worker process loaded the model once, however many stacks it ran
    pids = {o.pid for o in outcomes}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert [o.models_loaded for o in outcomes] == [1] * 6
    assert max(sum(o.pid == pid for o in outcomes) for pid in pids) >= 3


def test_workers_and_scheduler_exclude_each_other(blob_model, tmp_path):
    result = run(tmp_path, "--model", blob_model, "--workers", "2", "--scheduler", "tcp://127.0.0.1:8786")
    assert result.exit_code == 2
    assert result.stderr.strip() == "spine-run: error: give --workers or --scheduler, not both"


def test_the_runtime_does_not_import_dask():
    script = """
import sys
import spinedet.runtime.cli, spinedet.runtime.batch
print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_workers_without_dask_say_what_to_install(tmp_path):
    script = f"""
import sys
class _NoDask:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('dask', 'distributed'):
            raise ImportError('dask is blocked in this test')
sys.meta_path.insert(0, _NoDask())
from spinedet.runtime.cli import run_main
sys.argv = ['spine-run', {str(tmp_path / 'a.tif')!r}, '--workers', '2']
run_main()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("spine-run: error: --workers and --scheduler need dask.distributed: "
                                   "pip install 'spinedet[dask]'")


@needs_distributed
def test_scheduler_address_runs_on_that_cluster(stack_folder, blob_model, tmp_path):
    import logging

    from distributed import LocalCluster

    good = [stack_folder / "stack_0.tif", stack_folder / "stack_1.tif"]
    serial = run(*good, "--model", blob_model, "--out", tmp_path / "serial", "--threads", "1", "-q")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        remote = run(*good, "--model", blob_model, "--out", tmp_path / "remote", "--threads", "1", "-q",
                     "--scheduler", cluster.scheduler_address)
        assert len(cluster.scheduler.workers) == 1  # the cluster outlives the run: spine-run only connected
    assert serial.exit_code == remote.exit_code == 0 and remote.stderr == ""
    assert _without_timing(tmp_path / "remote") == _without_timing(tmp_path / "serial")
