"""The runtime must work where torch is not installed, and must never import it."""

import re
import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"

BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision'):
            raise ImportError('torch is blocked in this test')
sys.meta_path.insert(0, _NoTorch())
"""


def test_runtime_sources_never_import_torch():
    pattern = re.compile(r"^\s*(import|from)\s+(torch|torchvision)\b", re.MULTILINE)
    offenders = [p.name for p in RUNTIME.glob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_full_pipeline_runs_with_torch_blocked(blob_model, tmp_path):
    script = BLOCK_TORCH + f"""
import numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from blob_model import blob_image
import spinedet.runtime
from spinedet.runtime import SpineDetector
from spinedet.runtime import cli, evaluate, reports, stacks, tiling, backends
stack = np.stack([blob_image((128, 128), [(40, 40)]) for _ in range(4)])
result = SpineDetector({str(blob_model)!r}).detect(stack)
assert len(result.spines) == 1, result.spines
assert not any(m.split('.')[0] in ('torch', 'torchvision') for m in sys.modules)
print('ok')
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_validation_and_the_data_root_need_no_torch():
    """spine-validate runs models through the runtime, and tests/conftest.py imports data_root: neither needs torch."""
    script = BLOCK_TORCH + """
from spinedet.training.data import data_root
from spinedet.training import validate
assert not any(m.split('.')[0] in ('torch', 'torchvision') for m in sys.modules)
print('ok')
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_training_and_export_commands_say_what_is_missing_without_torch(tmp_path):
    script = BLOCK_TORCH + """
import sys
from spinedet.training.entry import train_main
sys.argv = ['spine-train', '--out', 'x']
try:
    train_main()
except SystemExit as exit:
    print('exit', exit.code)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "exit 2" in done.stdout
    assert done.stderr.strip() == ("spine-train: error: training needs torch and torchvision: "
                                   "pip install 'spinedet[train]'")
    script = BLOCK_TORCH + """
import sys
from spinedet.export.cli import main
sys.argv = ['spine-export', 'model.pt']
main()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "exporting needs torch, torchvision and onnx: pip install 'spinedet[export]'" in done.stderr
    assert "Traceback" not in done.stderr
