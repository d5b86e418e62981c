"""The package layers: the runtime never imports torch, training never imports export (export may import training)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(folder: str) -> list[tuple[str, str]]:
    """``(file, imported module)`` for every import statement in ``folder``'s modules (lazy ones included)."""
    found = []
    for path in sorted((ROOT / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(path.name, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # relative: resolve against the package the folder installs as
                    module = f"spinedet.{folder}" + (f".{module}" if module else "")
                found.append((path.name, module))
    return found


@pytest.mark.parametrize("folder, forbidden", [
    ("runtime", ("torch", "torchvision", "spinedet.training", "spinedet.export", "spinedet.napari")),
    ("training", ("spinedet.export",)),
])
def test_layer_does_not_import(folder, forbidden):
    bad = [(f, m) for f, m in _imports(folder) if any(m == x or m.startswith(x + ".") for x in forbidden)]
    assert not bad, f"{folder}/ imports what it must not: {bad}"


def test_napari_plugin_keeps_gui_code_in_the_widget():
    """spinedet.napari (folder napari_plugin/): only widget.py imports a GUI toolkit; the conversions, reader and
    writer are plain numpy (and import napari nowhere at all)."""
    gui = ("napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "torch")
    found = _imports("napari_plugin")
    bad = [(f, m) for f, m in found if f != "widget.py" and any(m == x or m.startswith(x + ".") for x in gui)]
    assert not bad, f"napari_plugin/ imports a GUI outside widget.py: {bad}"
    assert ("widget.py", "magicgui.widgets") in found and ("widget.py", "napari.qt.threading") in found


def test_the_check_sees_imports():
    """The scan finds lazy imports inside functions too (so an empty result above means something)."""
    training = _imports("training")
    assert ("checkpoints.py", "spinedet.training.recover") in training
    assert any(f == "onnx_export.py" and m.startswith("spinedet.training") for f, m in _imports("export"))
