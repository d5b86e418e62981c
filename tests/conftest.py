"""Shared fixtures: a small real ONNX detector (tests/blob_model.py) and the real-data folder."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# Qt without a screen for the napari plugin's tests (tests/test_napari.py); a platform set by the caller wins
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from blob_model import build_blob_model  # noqa: E402
from spinedet.training.data import data_root  # noqa: E402  (torch-free: tests/test_no_torch.py)


@pytest.fixture(scope="session")
def blob_model(tmp_path_factory):
    """A 128x128 blob detector following the model contract (dynamic batch), trained pixel size 0.1 µm."""
    return build_blob_model(tmp_path_factory.mktemp("model") / "blob.onnx")


@pytest.fixture(scope="session")
def shared_data():
    """The real data, where the commands look for it: ``$SPINEDET_DATA`` or ``../shared/data``."""
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data folder {root} is absent (a fresh clone has no ../shared; see SPINEDET_DATA)")
    return root


@pytest.fixture(scope="session")
def shared_data_or_none():
    """The real-data folder, or None where it is absent (tests that also run without it)."""
    root = data_root()
    return root if root.is_dir() else None


@pytest.fixture
def good_stack_path(tmp_path):
    """A small ImageJ TIFF stack (10 x 128 x 128, 0.1 µm pixels, 0.5 µm steps) with three blob spines."""
    import tifffile
    from test_detector import synthetic_stack

    path = tmp_path / "good.tif"
    tifffile.imwrite(path, synthetic_stack(), imagej=True, resolution=(10, 10),
                     metadata={"spacing": 0.5, "unit": "um", "axes": "ZYX"})
    return path
