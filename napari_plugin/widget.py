"""The "Detect spines" dock widget: spine-run on a napari image layer.

Pick the image layer, the model (empty: the shipped default for the device, as spine-run picks it),
the score threshold (the model card's by default), whether a spine must sit on a dendrite (the shaft
check of :mod:`~spinedet.runtime.attachment`, on where the card asks for it, as in spine-run), and
"maximum projection" for the fast 2D mode.  The
voxel size comes from the layer's scale (:func:`~.voxels.voxel_size_from_scale`).  Detection runs in a
worker thread (napari's ``create_worker``), so the viewer stays live; the result is added as the same
two layers the ``_boxes.csv`` reader gives (rectangles and centroids), placed over the image.  A
failure is one line in a napari notification (set ``SPINEDET_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton

from spinedet.runtime.attachment import MAX_DISTANCE_UM
from spinedet.runtime.backends import DEVICES
from spinedet.runtime.contract import load_card
from spinedet.runtime.detector import SpineDetector, default_model_path
from spinedet.runtime.errors import SpineDetError

from .layers import box_layers
from .voxels import detection_array, voxel_size_from_scale


def detect_in_layer(detector: SpineDetector, data, voxel_size, mip: bool):
    """Run ``detector`` on a layer's array (the worker's job): ``(result, seconds)`` or ``(SpineDetError, 0)``.

    Errors come back as values, not raised, so the worker never reports a traceback.
    """
    start = time.perf_counter()
    try:
        result = detector.detect(data, voxel_size=voxel_size, mip=mip)
    except SpineDetError as exc:
        return exc, 0.0
    except Exception as exc:  # a bug: one line too, unless debugging
        if os.environ.get("SPINEDET_DEBUG"):
            raise
        return SpineDetError(f"internal error {type(exc).__name__}: {exc} (set SPINEDET_DEBUG=1 for details)"), 0.0
    return result, time.perf_counter() - start


class DetectWidget(Container):
    """Dock widget running :class:`~spinedet.runtime.SpineDetector` on the chosen image layer of ``napari_viewer``."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=self._image_layers, nullable=True)
        self.model = FileEdit(label="model", mode="r", filter="*.onnx", value=None,
                              tooltip="ONNX model with its card (.json) beside it; empty: the shipped default")
        self.device = ComboBox(label="device", choices=list(DEVICES), value="cpu")
        self.score_threshold = FloatSpinBox(label="score threshold", min=0.0, max=0.99, step=0.01,
                                            tooltip="a spine's best box must score above this (default: the card's)")
        self.shaft_check = CheckBox(text="spines sit on a dendrite (shaft check)", value=False,
                                    tooltip="drop boxes farther than the card's distance (else 1 µm) from every "
                                            "large bright structure: isolated puncta, out-of-focus clouds")
        self.mip = CheckBox(text="maximum projection (fast 2D)", value=False)
        self.run_button = PushButton(text="Detect spines")
        self.status = Label(value="")
        super().__init__(widgets=[self.image, self.model, self.device, self.score_threshold, self.shaft_check,
                                  self.mip, self.run_button, self.status])
        self.worker = None
        self._detectors: dict = {}
        self.model.changed.connect(self._card_threshold)
        self.device.changed.connect(self._card_threshold)
        self.run_button.changed.connect(self.run)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self.viewer.layers.events.renamed.connect(self._refresh_images)
        self._refresh_images()
        self._card_threshold()

    # --- choices ---------------------------------------------------------------------------------------------------

    def _image_layers(self, _widget=None) -> list:
        return [(layer.name, layer) for layer in self.viewer.layers if layer._type_string == "image"]

    def _refresh_images(self, _event=None) -> None:
        """Offer the image layers; keep the choice, else take the active layer if it is an image, else the last."""
        self.image.reset_choices()
        if self.image.value is None:
            images = [layer for _, layer in self._image_layers()]
            active = self.viewer.layers.selection.active
            if images:
                self.image.value = active if active in images else images[-1]

    def model_path(self) -> Path:
        """The chosen model file, or the shipped default for the chosen device (as spine-run picks it)."""
        text = str(self.model.line_edit.value).strip()
        return Path(text) if text else default_model_path(self.device.value)

    def _card_threshold(self, _value=None) -> None:
        """Show the chosen model card's score threshold and whether it asks for the shaft check."""
        try:
            card = load_card(self.model_path())
        except SpineDetError as exc:
            self._error(exc)
            return
        self.score_threshold.value = card.score_threshold
        self.shaft_check.value = card.shaft_distance_um is not None

    def _shaft_distance(self) -> float:
        """µm for the detector: the card's distance (else the default) when checked, inf (no check) when not."""
        if not self.shaft_check.value:
            return math.inf
        return load_card(self.model_path()).shaft_distance_um or MAX_DISTANCE_UM

    # --- running ---------------------------------------------------------------------------------------------------

    def _detector(self) -> SpineDetector:
        key = (self.model_path(), self.device.value, round(float(self.score_threshold.value), 4),
               self._shaft_distance())
        if key not in self._detectors:  # one loaded model at a time: free the last one's backend
            detector = SpineDetector(key[0], device=key[1], score_threshold=key[2], shaft_distance_um=key[3])
            for old in self._detectors.values():
                old.close()
            self._detectors = {key: detector}
        return self._detectors[key]

    def run(self, _value=None):
        """Start detection on the chosen layer in a worker thread; returns the worker (None if refused)."""
        from napari.qt.threading import create_worker

        layer = self.image.value
        if layer is None:
            self._error(SpineDetError("no image layer to detect in: open a stack first"))
            return None
        if self.worker is not None and self.worker.is_running:
            self._error(SpineDetError("detection is still running"))
            return None
        try:
            data = detection_array(layer.data, layer.rgb, layer.multiscale)
            detector = self._detector()
            voxel, notes = voxel_size_from_scale(layer.scale, getattr(layer, "units", None),
                                                 detector.card.pixel_size_um)
        except SpineDetError as exc:
            self._error(exc.with_path(layer.name))
            return None
        mip = bool(self.mip.value) and data.ndim == 3
        ndim = 2 if (mip or data.ndim == 2) else 3
        placed = (tuple(layer.scale)[-ndim:], tuple(layer.translate)[-ndim:])
        self.status.value = f"detecting in {layer.name} ..."
        self.run_button.enabled = False
        self.worker = create_worker(detect_in_layer, detector, data, voxel, mip, _start_thread=False)
        self.worker.returned.connect(lambda out: self._done(out, layer.name, ndim, placed, notes))
        self.worker.finished.connect(lambda: setattr(self.run_button, "enabled", True))
        self.worker.start()
        return self.worker

    def _done(self, out, name: str, ndim: int, placed, notes) -> None:
        from napari.utils.notifications import show_info

        result, seconds = out
        if isinstance(result, SpineDetError):
            self._error(result.with_path(name))
            return
        for data, kwargs, kind in box_layers(result.table, name, ndim, *placed):
            getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        n = len(result.spines)
        self.status.value = f"{n} spine{'s' if n != 1 else ''} in {name} ({result.mode}, {seconds:.1f} s)"
        for text in notes:
            show_info(f"spinedet: {name}: {text}")

    def _error(self, exc: SpineDetError) -> None:
        from napari.utils.notifications import show_error

        self.status.value = f"error: {exc}"
        show_error(f"spinedet: {exc}")
