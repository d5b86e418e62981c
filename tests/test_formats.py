"""Microscope formats beyond TIFF: OME-Zarr (runtime/zarr_stacks.py) and CZI/ND2/LIF through bioio
(runtime/bioio_stacks.py), all reached through open_stack."""

import json
import logging
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from spinedet.runtime import bioio_stacks
from spinedet.runtime.cli import run_app
from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.stacks import open_stack
from spinedet.runtime.tables import read_box_table
from spinedet.runtime.track_cli import app as track_app
from spinedet.runtime.voxels import assumptions
from test_detector import synthetic_stack
from test_sessions import blob_session, write_tiff

NGFF_VERSIONS = ["0.4", "0.5"]


def needs_zarr():
    zarr = pytest.importorskip("zarr", reason="the [zarr] extra (zarr) is not installed")
    if int(zarr.__version__.split(".")[0]) < 3:
        pytest.skip("these tests write OME-Zarr with the zarr 3 API (zarr 2 reads NGFF 0.4 only)")
    return zarr


def write_ome_zarr(path, data, axes="zyx", scale=None, units="micrometer", version="0.4", chunks=None,
                   image_scale=None):
    """Write ``data`` as a one-level OME-Zarr image (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3) with its metadata."""
    zarr = needs_zarr()
    if units is None or isinstance(units, str):
        units = {"z": units, "y": units, "x": units}
    kinds = {"t": "time", "c": "channel"}
    axes_meta = [dict({"name": a, "type": kinds.get(a, "space")},
                      **({"unit": units[a]} if units.get(a) else {})) for a in axes]
    dataset = {"path": "0", "coordinateTransformations": [{"type": "scale",
                                                            "scale": list(scale or [1.0] * len(axes))}]}
    image = {"axes": axes_meta, "datasets": [dataset], "name": path.name}
    if image_scale is not None:
        image["coordinateTransformations"] = [{"type": "scale", "scale": list(image_scale)}]
    group = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    group.create_array("0", data=data, chunks=chunks or (1,) * (data.ndim - 2) + data.shape[-2:])
    if version == "0.4":
        group.attrs["multiscales"] = [dict(image, version="0.4")]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [image]}
    return path


def ramp(shape, dtype=np.uint16):
    return (np.arange(int(np.prod(shape))) % 1000).reshape(shape).astype(dtype)


# --- OME-Zarr -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", NGFF_VERSIONS)
def test_ome_zarr_zyx_slices_and_voxel_size(tmp_path, version):
    data = ramp((6, 40, 50))
    path = write_ome_zarr(tmp_path / "cell.ome.zarr", data, scale=[0.7, 0.12, 0.12], version=version)
    with open_stack(path) as stack:
        assert stack.shape == (6, 40, 50) and stack.dtype == np.uint16 and not stack.is_2d
        assert stack.name == "cell" and stack.axes == "ZYX" and stack.time_point is None
        assert stack.voxel_size.source == "OME-Zarr metadata"
        assert stack.voxel_size.x_um == pytest.approx(0.12) and stack.voxel_size.z_um == pytest.approx(0.7)
        assert np.array_equal(np.stack(list(stack)), data)
        np.testing.assert_array_equal(stack[-1], data[-1])


def test_ome_zarr_units_are_converted_and_a_missing_unit_is_unknown(tmp_path):
    data = ramp((4, 30, 30), np.float32)
    nm = write_ome_zarr(tmp_path / "nm.zarr", data, scale=[250, 90, 90], units="nanometer")
    with open_stack(nm) as stack:
        assert stack.voxel_size.x_um == pytest.approx(0.09) and stack.voxel_size.z_um == pytest.approx(0.25)
        assert stack.dtype == np.float32
    # a multiscale-level scale applies on top of the dataset's
    both = write_ome_zarr(tmp_path / "both.zarr", data, scale=[1, 2, 2], image_scale=[0.5, 0.05, 0.05])
    with open_stack(both) as stack:
        assert stack.voxel_size.x_um == pytest.approx(0.1) and stack.voxel_size.z_um == pytest.approx(0.5)
    bare = write_ome_zarr(tmp_path / "bare.zarr", data, scale=[0.5, 0.1, 0.1], units=None)
    with open_stack(bare) as stack:
        voxel = stack.voxel_size
        assert voxel.x_um is None and voxel.z_um is None and voxel.source == "unknown"
        assert "x scale of 0.1 with no unit" in voxel.ignored
        card = SimpleNamespace(pixel_size_um=0.1, depth_context_um=1.0)
        notes = assumptions(voxel, card, len(stack))
        assert "no pixel size in the file (ignored a x scale of 0.1 with no unit" in notes[0]
        assert "no z-step" in notes[1]
    with open_stack(bare, pixel_size=0.2, z_step=1.0) as stack:
        assert (stack.voxel_size.x_um, stack.voxel_size.z_um) == (0.2, 1.0)
    huge = write_ome_zarr(tmp_path / "huge.zarr", data, scale=[0.5, 300, 300])  # 300 µm pixels: not a microscope's
    with open_stack(huge) as stack:
        assert stack.voxel_size.x_um is None and stack.voxel_size.z_um == pytest.approx(0.5)
        assert "pixel size 300 µm in the OME-Zarr metadata" in stack.voxel_size.ignored


@pytest.mark.parametrize("version", NGFF_VERSIONS)
def test_ome_zarr_tczyx_channel_and_time_point(tmp_path, version):
    data = ramp((3, 2, 5, 24, 32))
    data += (np.arange(3)[:, None, None, None, None] * 1000 + np.arange(2)[None, :, None, None, None] * 100) \
        .astype(np.uint16)
    path = write_ome_zarr(tmp_path / "series.ome.zarr", data, axes="tczyx", scale=[1, 1, 0.5, 0.1, 0.1],
                          version=version)
    for t in range(3):
        with open_stack(path, channel=1, time_point=t) as stack:
            assert stack.shape == (5, 24, 32) and stack.time_points == 3 and stack.time_point == t
            assert np.array_equal(np.stack(list(stack)), data[t, 1])
            assert stack.voxel_size.z_um == pytest.approx(0.5)
    with pytest.raises(SpineDetError, match="time series with 3 time points"):
        open_stack(path, channel=0)
    with pytest.raises(SpineDetError, match="2 channels.*--channel"):
        open_stack(path, time_point=0)
    with pytest.raises(SpineDetError, match="time point 3 does not exist: the file has 3"):
        open_stack(path, channel=0, time_point=3)
    with pytest.raises(SpineDetError, match="--channel 2 does not exist"):
        open_stack(path, channel=2, time_point=0)
    single = write_ome_zarr(tmp_path / "yx.zarr", data[0, 0, 0], axes="yx", scale=[0.1, 0.1])
    with open_stack(single) as stack:
        assert stack.is_2d and stack.shape == (1, 24, 32)
        np.testing.assert_array_equal(stack[0], data[0, 0, 0])


def test_ome_zarr_slice_reads_only_its_own_chunks(tmp_path):
    """Each slice is its own chunk: damaging slice 3's chunk breaks slice 3 alone (one line), the others still read."""
    data = np.random.default_rng(0).integers(0, 4000, (6, 40, 50)).astype(np.uint16)
    path = write_ome_zarr(tmp_path / "s.zarr", data, scale=[0.5, 0.1, 0.1])
    chunk = path / "0" / "3.0.0"  # NGFF 0.4 (Zarr v2) chunk key of slice 3
    assert chunk.is_file()
    chunk.write_bytes(b"\x00garbage" * 10)
    with open_stack(path) as stack:
        for k in (0, 1, 2, 4, 5):
            np.testing.assert_array_equal(stack[k], data[k])
        with pytest.raises(SpineDetError) as info:
            stack[3]
    text = str(info.value)
    assert text.startswith(str(path)) and "cannot read slice 3" in text and "\n" not in text


def test_large_ome_zarr_is_read_in_constant_memory(tmp_path):
    """Reading every slice of a 200 MB OME-Zarr stack must hold a few slices (2 MB each), not the stack."""
    zarr = needs_zarr()
    path = tmp_path / "big.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    array = group.create_array("0", shape=(100, 1024, 1024), chunks=(1, 1024, 1024), dtype="uint16")
    for k in range(100):
        array[k] = k
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space"} for a in "zyx"],
                                   "datasets": [{"path": "0"}]}]
    # VmHWM (this process image's peak RSS) after importing zarr, and after reading every slice
    script = f"""
import re
import zarr
from spinedet.runtime.stacks import open_stack
def peak():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) // 1024
base = peak()
with open_stack({str(path)!r}) as stack:
    total = sum(int(stack[k][::64, ::64].sum()) for k in range(len(stack)))
assert total == 16 * 16 * sum(range(100)), total
print(base, peak())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    base, peak = (int(v) for v in done.stdout.split())
    assert peak - base < 60, f"peak RSS grew {peak - base} MB while reading a 200 MB OME-Zarr stack"


@pytest.mark.parametrize("make, message", [
    (lambda p, zarr: p.mkdir(), "not a Zarr folder"),
    (lambda p, zarr: zarr.open_group(str(p), mode="w").attrs.update({"name": "x"}), "no OME-Zarr multiscales"),
    (lambda p, zarr: write_ome_zarr(p, ramp((4, 16, 16)), axes="zxy"), "unsupported OME-Zarr axes z,x,y"),
    (lambda p, zarr: write_ome_zarr(p, ramp((2, 3, 4, 16, 16)), axes="tzqyx"), "unsupported OME-Zarr axes"),
    (lambda p, zarr: write_ome_zarr(p, ramp((2, 4, 16, 16)), axes="czyx"), "2 channels"),
    (lambda p, zarr: write_ome_zarr(p, ramp((4, 16, 16), np.complex64), axes="zyx"), "pixel type"),
])
def test_bad_zarr_folders_give_one_line_naming_the_folder(tmp_path, make, message):
    zarr = needs_zarr()
    path = tmp_path / "bad.zarr"
    make(path, zarr)
    with pytest.raises(SpineDetError) as info:
        open_stack(path)
    text = str(info.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_missing_zarr_package_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zarr", None)  # `import zarr` now fails as if it were not installed
    (tmp_path / "cell.zarr").mkdir()
    with pytest.raises(SpineDetError, match=r'cell.zarr: reading OME-Zarr needs the zarr package: '
                                            r'pip install "spinedet\[zarr\]"$'):
        open_stack(tmp_path / "cell.zarr")


def test_spine_run_on_ome_zarr_gives_the_tiff_boxes(blob_model, tmp_path):
    """The same stack as OME-Zarr (sizes in nm) and as an ImageJ TIFF (µm) gives the same boxes and voxel size."""
    data = synthetic_stack()
    tiff = tmp_path / "in" / "good.tif"
    tiff.parent.mkdir()
    tifffile.imwrite(tiff, data, imagej=True, resolution=(1 / 0.08, 1 / 0.08),
                     metadata={"spacing": 0.5, "unit": "um", "axes": "ZYX"})
    zarr_path = write_ome_zarr(tmp_path / "in" / "good_z.ome.zarr", data, scale=[500, 80, 80], units="nanometer")
    results = {}
    for name, path in (("tif", tiff), ("zarr", zarr_path)):
        out = tmp_path / name
        result = CliRunner().invoke(run_app, [str(path), "--model", str(blob_model), "--out", str(out), "-q"])
        assert result.exit_code == 0, result.output
        stem = path.name.split(".")[0]
        summary = json.loads((out / f"{stem}_summary.json").read_text())
        assert summary["voxel_size_um"]["x"] == pytest.approx(0.08) and summary["voxel_size_um"]["z"] == 0.5
        results[name] = read_box_table(out / f"{stem}_boxes.csv")
    assert len(results["tif"]) > 0
    for column in ("spine_id", "z", "boxes", "score"):
        np.testing.assert_allclose(getattr(results["zarr"], column), getattr(results["tif"], column))


def test_spine_track_on_a_time_series_ome_zarr_and_a_folder_with_one(blob_model, tmp_path):
    """A TZYX OME-Zarr's time points are the sessions; a folder of stacks may hold OME-Zarr beside TIFF."""
    sessions = [blob_session(k) for k in range(3)]
    tiffs = [write_tiff(tmp_path / f"day{k + 1}.tif", image) for k, image in enumerate(sessions)]
    series = write_ome_zarr(tmp_path / "series.ome.zarr", np.stack(sessions), axes="tzyx", scale=[1, 0.5, 0.1, 0.1],
                            units={"t": None, "z": "micrometer", "y": "micrometer", "x": "micrometer"})
    folder = tmp_path / "days"
    folder.mkdir()
    (folder / "day1.tif").write_bytes(tiffs[0].read_bytes())
    write_ome_zarr(folder / "day2.zarr", sessions[1], scale=[0.5, 0.1, 0.1])
    (folder / "day10.tif").write_bytes(tiffs[2].read_bytes())
    observations = {}
    for name, inputs in (("tif", tiffs), ("zarr", [series]), ("folder", [folder])):
        result = CliRunner().invoke(track_app, [str(p) for p in inputs] + ["--model", str(blob_model), "--out",
                                                                            str(tmp_path / name), "-q"])
        assert result.exit_code == 0, result.output
        observations[name] = (tmp_path / name / "series_observations.csv").read_text()
    assert observations["zarr"] == observations["tif"] and observations["folder"] == observations["tif"]
    inputs = json.loads((tmp_path / "folder" / "series_summary.json").read_text())["inputs"]
    assert [p.rsplit("/", 1)[-1] for p in inputs] == ["day1.tif", "day2.zarr", "day10.tif"]


# --- bioio (CZI, ND2, LIF) ----------------------------------------------------------------------------------------

@pytest.fixture
def tiff_through_bioio(monkeypatch):
    """Send .tif files through the bioio adapter (bioio-ome-tiff), as .czi/.nd2/.lif go through theirs."""
    pytest.importorskip("bioio", reason="the [formats] extra (bioio) is not installed")
    pytest.importorskip("bioio_ome_tiff", reason="bioio-ome-tiff (the reader this test uses) is not installed")
    monkeypatch.setitem(bioio_stacks.READERS, ".tif", ("bioio_ome_tiff", "bioio-ome-tiff"))


def test_bioio_adapter_reads_slices_channels_time_and_voxel_size(tmp_path, tiff_through_bioio):
    data = ramp((2, 5, 2, 24, 32))  # TZCYX
    data[:, :, 1] += 2000
    data[1] += 100
    path = tmp_path / "cell.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TZCYX", "PhysicalSizeX": 0.09, "PhysicalSizeY": 0.09,
                                                     "PhysicalSizeZ": 0.4})
    with open_stack(path, channel=1, time_point=1) as stack:
        assert stack.voxel_size.source == "TIF metadata"
        assert stack.voxel_size.x_um == pytest.approx(0.09) and stack.voxel_size.z_um == pytest.approx(0.4)
        assert stack.shape == (5, 24, 32) and stack.time_points == 2 and stack.name == "cell"
        assert np.array_equal(np.stack(list(stack)), data[1, :, 1])
    with pytest.raises(SpineDetError, match="time series with 2 time points"):
        open_stack(path, channel=0)
    with pytest.raises(SpineDetError, match="2 channels.*--channel"):
        open_stack(path, time_point=0)
    plain = tmp_path / "plain.tif"  # no T or C axis: size-1 axes are dropped, so no channel or time is asked for
    tifffile.imwrite(plain, data[0, :, 0], ome=True, metadata={"axes": "ZYX"})
    with open_stack(plain) as stack:
        assert stack.axes == "ZYX" and stack.time_point is None and stack.voxel_size.x_um is None
        assert np.array_equal(np.stack(list(stack)), data[0, :, 0])
    with pytest.raises(SpineDetError, match="not a time series"):
        open_stack(plain, time_point=1)


@pytest.mark.parametrize("missing", ["bioio", "bioio_czi"])
def test_missing_bioio_or_reader_names_the_pip_command(tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    path = tmp_path / "scan.czi"
    path.write_bytes(b"ZISRAWFILE" + b"\x00" * 100)
    with pytest.raises(SpineDetError) as info:
        open_stack(path)
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text
    assert f"needs bioio and its reader bioio-czi ({missing} is not installed)" in text
    assert text.endswith('pip install "spinedet[formats]"')


@pytest.mark.parametrize("suffix, module", [(".czi", "bioio_czi"), (".nd2", "bioio_nd2"), (".lif", "bioio_lif")])
def test_damaged_vendor_file_is_one_line(tmp_path, suffix, module, caplog):
    pytest.importorskip("bioio", reason="the [formats] extra (bioio) is not installed")
    pytest.importorskip(module, reason=f"the [formats] extra ({module}) is not installed")
    path = tmp_path / f"scan{suffix}"
    path.write_bytes(b"not a microscope file " * 20)
    with caplog.at_level(logging.WARNING), pytest.raises(SpineDetError) as info:
        open_stack(path)
    text = str(info.value)
    assert text.startswith(str(path)) and f"not a readable {suffix[1:].upper()} file" in text and "\n" not in text
    assert len(text) < 400
    # bioio's own warning about the failed reader would be a second line on stderr
    assert not [r for r in caplog.records if r.name.startswith("bioio")]
