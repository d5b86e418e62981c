import subprocess
import sys

import imagecodecs
import numpy as np
import pytest
import tifffile

from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.stacks import open_stack, read_image


def ramp_stack(z=6, y=40, x=50, dtype=np.uint16):
    return (np.arange(z * y * x) % 1000).reshape(z, y, x).astype(dtype)


def test_imagej_stack_voxel_size_and_slices(tmp_path):
    data = ramp_stack()
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.12, 1 / 0.12),
                     metadata={"spacing": 0.7, "unit": "um", "axes": "ZYX"})
    with open_stack(path) as stack:
        assert stack.shape == (6, 40, 50) and stack.dtype == np.uint16 and not stack.is_2d
        assert stack.voxel_size.x_um == pytest.approx(0.12) and stack.voxel_size.z_um == pytest.approx(0.7)
        assert stack.voxel_size.source == "ImageJ metadata"
        np.testing.assert_array_equal(stack[3], data[3])
        np.testing.assert_array_equal(stack[-1], data[-1])


def test_imagej_nanometre_unit_is_converted(tmp_path):
    path = tmp_path / "nm.tif"
    tifffile.imwrite(path, ramp_stack(), imagej=True, resolution=(1 / 100, 1 / 100),
                     metadata={"spacing": 500, "unit": "nm", "axes": "ZYX"})
    with open_stack(path) as stack:
        assert stack.voxel_size.x_um == pytest.approx(0.1) and stack.voxel_size.z_um == pytest.approx(0.5)


def test_ome_tiff_voxel_size(tmp_path):
    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(path, ramp_stack(dtype=np.float32), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.09, "PhysicalSizeY": 0.09, "PhysicalSizeZ": 0.4})
    with open_stack(path) as stack:
        assert stack.voxel_size.source == "OME metadata"
        assert stack.voxel_size.x_um == pytest.approx(0.09) and stack.voxel_size.z_um == pytest.approx(0.4)
        assert stack.dtype == np.float32 and stack.name == "s"


def test_command_line_overrides_metadata(tmp_path):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, ramp_stack(), imagej=True, resolution=(10, 10),
                     metadata={"spacing": 0.5, "unit": "um", "axes": "ZYX"})
    with open_stack(path, pixel_size=0.2, z_step=1.0) as stack:
        assert (stack.voxel_size.x_um, stack.voxel_size.z_um) == (0.2, 1.0)
    with pytest.raises(SpineDetError, match="--pixel-size must be a positive number"):
        open_stack(path, pixel_size=-1)


def test_plain_tiff_without_metadata_has_unknown_voxel_size_and_72_dpi_is_ignored(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, ramp_stack(dtype=np.uint8), resolution=(72, 72), resolutionunit="INCH")
    with open_stack(path) as stack:
        assert stack.voxel_size.x_um is None and stack.shape == (6, 40, 50)
        ignored = stack.voxel_size.ignored
        assert "72 pixels per inch" in ignored and "print or display setting" in ignored


def test_resolution_tags_in_centimetres(tmp_path):
    path = tmp_path / "cm.tif"
    tifffile.imwrite(path, ramp_stack(dtype=np.uint8), resolution=(1e5, 1e5), resolutionunit="CENTIMETER")
    with open_stack(path) as stack:
        assert stack.voxel_size.x_um == pytest.approx(0.1)


def test_compressed_stack_reads_page_by_page(tmp_path):
    data = ramp_stack()
    path = tmp_path / "zlib.tif"
    tifffile.imwrite(path, data, compression="zlib", metadata={"axes": "ZYX"})
    with open_stack(path) as stack:
        assert all(np.array_equal(stack[k], data[k]) for k in range(len(stack)))


def test_large_stack_is_read_in_constant_memory(tmp_path):
    """Reading every slice of a 400 MB stack must not hold the stack in memory."""
    path = tmp_path / "big.tif"
    # 200 x 1024 x 1024 uint16 = 400 MB, filled through a memory map so the test itself stays small
    tifffile.imwrite(path, shape=(200, 1024, 1024), dtype=np.uint16, imagej=True, metadata={"axes": "ZYX"})
    data = tifffile.memmap(path)
    data[:] = 7
    data.flush()
    del data
    # VmHWM (peak RSS of this process image) rather than ru_maxrss, which Linux carries over from
    # the forking parent across exec
    script = f"""
import re
from spinedet.runtime.stacks import open_stack
with open_stack({str(path)!r}) as stack:
    assert len(stack) == 200, stack.shape
    total = sum(int(stack[k][::64, ::64].sum()) for k in range(len(stack)))
assert total == 7 * 200 * 16 * 16, total
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) // 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    peak_mb = int(done.stdout.strip())
    assert peak_mb < 250, f"peak RSS {peak_mb} MB while reading a 400 MB stack"


def test_contiguous_reader_picks_the_right_plane(tmp_path):
    data = np.stack([ramp_stack(z=5) + 10 * c for c in range(3)], axis=1)  # ZCYX
    path = tmp_path / "zc.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX"})
    with open_stack(path, channel=2) as stack:
        for k in range(5):
            np.testing.assert_array_equal(stack[k], data[k, 2])


def test_zcyx_needs_a_channel(tmp_path):
    data = np.stack([ramp_stack(z=5), ramp_stack(z=5) * 0 + 7], axis=1)  # ZCYX
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(SpineDetError, match="2 channels.*--channel"):
        open_stack(path)
    with open_stack(path, channel=1) as stack:
        assert stack.shape == (5, 40, 50) and (stack[0] == 7).all()
    with pytest.raises(SpineDetError, match="--channel 2 does not exist"):
        open_stack(path, channel=2)


def test_imagej_stack_without_axes_says_how_to_mend_it(tmp_path):
    """tifffile's ``imagej=True`` without axes stores a z-stack as channels; the error says so."""
    path = tmp_path / "noaxes.tif"
    tifffile.imwrite(path, ramp_stack(z=12), imagej=True)
    with pytest.raises(SpineDetError, match="12 channels.*if they are z-slices.*axes ZYX") as caught:
        open_stack(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    two = tmp_path / "two.tif"  # a real two-channel image gets no such hint
    tifffile.imwrite(two, np.stack([ramp_stack(z=1)[0]] * 2), imagej=True, metadata={"axes": "CYX"})
    with pytest.raises(SpineDetError, match=r"2 channels.*\(0-based\)$"):
        open_stack(two)


def test_grey_stored_as_rgb_png_is_grey_and_true_colour_needs_channel(tmp_path):
    grey = (np.arange(30 * 40) % 256).reshape(30, 40).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    (tmp_path / "g.png").write_bytes(imagecodecs.png_encode(rgb))
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), grey)
    rgb[..., 1] = 0
    (tmp_path / "c.png").write_bytes(imagecodecs.png_encode(rgb))
    with pytest.raises(SpineDetError, match="colour channels"):
        open_stack(tmp_path / "c.png")
    assert (read_image(tmp_path / "c.png", channel=1) == 0).all()
    tifffile.imwrite(tmp_path / "g.tif", np.repeat(grey[:, :, None], 3, axis=2), photometric="rgb")
    with open_stack(tmp_path / "g.tif") as stack:
        assert stack.is_2d and stack.shape == (1, 30, 40)
        np.testing.assert_array_equal(stack[0], grey)


def test_nearly_identical_colour_channels_are_grey(tmp_path):
    """Grey saved as RGB with a few pixels off by up to 4 levels (compression, colour management) is grey."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 30, 40)).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=3)
    rgb[:, 3, 4, 1] = np.clip(rgb[:, 3, 4, 1].astype(int) + 4, 0, 255)
    rgb[:, 10, 20, 2] = np.clip(rgb[:, 10, 20, 2].astype(int) - 4, 0, 255)
    tifffile.imwrite(tmp_path / "nearly.tif", rgb, photometric="rgb")
    with open_stack(tmp_path / "nearly.tif") as stack:
        assert stack.shape == (5, 30, 40)
        np.testing.assert_array_equal(stack[2], grey[2])
    (tmp_path / "nearly.png").write_bytes(imagecodecs.png_encode(rgb[0]))
    np.testing.assert_array_equal(read_image(tmp_path / "nearly.png"), grey[0])
    rgb[:, :, :20, 1] //= 2  # a second fluorophore: really different
    tifffile.imwrite(tmp_path / "two.tif", rgb, photometric="rgb")
    with pytest.raises(SpineDetError, match="colour channels"):
        open_stack(tmp_path / "two.tif")


def test_folder_of_paper_style_png_slices(tmp_path):
    folder = tmp_path / "stackA"
    folder.mkdir()
    for z in (3, 1, 2):
        (folder / f"SR052stack1-{z:02d}.png").write_bytes(imagecodecs.png_encode(np.full((20, 30), z, np.uint8)))
    with open_stack(folder) as stack:
        assert stack.z_index == [1, 2, 3] and stack.name == "SR052stack1" and stack.shape == (3, 20, 30)
        assert [int(stack[k][0, 0]) for k in range(3)] == [1, 2, 3]
    (folder / "notes.png").write_bytes(imagecodecs.png_encode(np.zeros((20, 30), np.uint8)))
    with pytest.raises(SpineDetError, match="not named like"):
        open_stack(folder)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("not an image"), "not a TIFF or PNG"),
    (lambda p: p.write_bytes(b""), "file is empty"),
    (lambda p: p.write_bytes(b"II*\x00" + b"\xff" * 64), "TIFF"),
    (lambda p: tifffile.imwrite(p, np.zeros((2, 3, 4, 16, 16), np.uint8), imagej=True,
                                metadata={"axes": "TZCYX"}), "time series"),
    (lambda p: tifffile.imwrite(p, np.zeros((2, 3, 4, 5, 16, 16), np.uint8),
                                metadata={"axes": "QQQQYX"}), "data"),
    (lambda p: tifffile.imwrite(p, np.zeros((4, 16, 16), np.complex64), photometric="minisblack"), "pixel type"),
])
def test_bad_files_give_one_line_naming_the_file(tmp_path, make, message):
    path = tmp_path / "bad.tif"
    make(path)
    with pytest.raises(SpineDetError) as info:
        open_stack(path)
    text = str(info.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_truncated_tiffs_are_refused(tmp_path):
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, ramp_stack(z=8), imagej=True, metadata={"axes": "ZYX"})
    data = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpineDetError, match="truncated"):
        open_stack(cut)
    zipped = tmp_path / "zip.tif"
    tifffile.imwrite(zipped, np.random.default_rng(0).integers(0, 999, (8, 40, 50)).astype(np.uint16),
                     compression="zlib", metadata={"axes": "ZYX"})
    data = zipped.read_bytes()
    cut.write_bytes(data[: len(data) - 2000])
    with pytest.raises(SpineDetError):
        with open_stack(cut) as stack:
            [stack[k] for k in range(len(stack))]


def test_missing_path(tmp_path):
    with pytest.raises(SpineDetError, match="no such file"):
        open_stack(tmp_path / "nope.tif")


def test_time_point_of_a_time_series(tmp_path):
    """spine-track reads a TZYX series one time point at a time; without time_point it is refused as before."""
    data = ramp_stack(z=4)[None] + np.arange(3, dtype=np.uint16)[:, None, None, None] * 1000
    path = tmp_path / "series.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(10, 10), metadata={"axes": "TZYX", "spacing": 0.5,
                                                                             "unit": "um"})
    for t in range(3):
        with open_stack(path, time_point=t) as stack:
            assert stack.shape == data.shape[1:] and stack.time_points == 3 and stack.time_point == t
            assert np.array_equal(np.stack(list(stack)), data[t])
            assert stack.voxel_size.x_um == pytest.approx(0.1) and stack.voxel_size.z_um == pytest.approx(0.5)
    with pytest.raises(SpineDetError, match="time series with 3 time points.*save each time point separately"):
        open_stack(path)
    with pytest.raises(SpineDetError, match="time point 3 does not exist: the file has 3"):
        open_stack(path, time_point=3)
    compressed = tmp_path / "zipped.tif"
    tifffile.imwrite(compressed, data, compression="zlib", photometric="minisblack", metadata={"axes": "TZYX"})
    with open_stack(compressed, time_point=2) as stack:
        assert np.array_equal(np.stack(list(stack)), data[2])
    channels = tmp_path / "tzcyx.tif"
    tifffile.imwrite(channels, np.stack([data, data + 7], axis=2), imagej=True, metadata={"axes": "TZCYX"})
    with open_stack(channels, time_point=1, channel=1) as stack:
        assert np.array_equal(np.stack(list(stack)), data[1] + 7)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, data[0], imagej=True, metadata={"axes": "ZYX"})
    with open_stack(plain, time_point=0) as stack:
        assert stack.time_points == 1 and stack.time_point is None
    with pytest.raises(SpineDetError, match="not a time series"):
        open_stack(plain, time_point=1)
