"""Checkpoints: saving and loading a trained detector, and starting a new run from one.

A checkpoint is ``torch.save`` of ``{"format", "config", "model", ...}``
(the rest: iteration, optimiser, metrics), written atomically.  Where only an
exported ``.onnx`` model exists (the shipped default), its weights are
recovered from the graph (:mod:`spinedet.training.recover`), so every loader
here takes either.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.files import write_all

from .config import CHECKPOINT_FORMAT, ModelConfig
from .model import build_model


def save_checkpoint(path, model: nn.Module, config: ModelConfig, **state) -> None:
    """Write ``{'config', 'model', **state}`` to ``path`` all-or-nothing (:func:`~spinedet.runtime.files.write_all`)."""
    payload = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "model": model.state_dict(), **state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_all({Path(path): buffer.getvalue()})


def load_checkpoint(path, map_location="cpu"):
    """``(model, config, state)`` from a checkpoint; ``state`` is the rest of the payload (iteration, optimizer, ...).

    The model is rebuilt from the saved config without reading any ImageNet file.
    """
    payload = _read_checkpoint(path, map_location)
    config = ModelConfig.from_dict(payload.pop("config"))
    model = build_model(config, pretrained=False)
    model.load_state_dict(payload.pop("model"), strict=True)
    payload.pop("format")
    return model, config, payload


def _read_checkpoint(path, map_location="cpu") -> dict:
    """The payload of a ``spine-train`` checkpoint; SpineDetError naming the file if it is not one."""
    if not Path(path).is_file():
        raise SpineDetError("no such checkpoint file", path=path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a file that is not a checkpoint
        raise SpineDetError(f"not a spine-train checkpoint ({type(exc).__name__})", path=path) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "config" not in payload:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise SpineDetError(f"not a spine-train checkpoint (format {found}, expected {CHECKPOINT_FORMAT})",
                            path=path)
    return payload


def _is_onnx(path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def checkpoint_config(path) -> ModelConfig:
    """The model config saved in a checkpoint (without building the model), or of an exported ``.onnx`` model."""
    if _is_onnx(path):
        from .recover import config_from_onnx

        return config_from_onnx(path)
    return ModelConfig.from_dict(_read_checkpoint(path)["config"])


def load_model(path):
    """``(model, config)`` of a checkpoint or of an exported ``.onnx`` model with its card.

    An exported model's weights are recovered from its graph
    (:func:`spinedet.training.recover.model_from_onnx`).
    """
    if _is_onnx(path):
        from .recover import model_from_onnx

        return model_from_onnx(path)
    model, config, _ = load_checkpoint(path)
    return model, config


def load_for_finetuning(path, roi_context_px: float | None = None, depth_context_um: float | None = None,
                        frozen_stages: int | None = None):
    """``(model, config)`` from a checkpoint, to start a new run from its weights.

    ``path`` may also be an exported ``.onnx`` model with its card (the
    shipped default model, say; see :func:`load_model`).

    roi_context_px: give a checkpoint without context pooling a context
    pool of this many pixels (the box head's first layer gets inputs for
    the context features).  depth_context_um: give a slice-only checkpoint
    depth context (the first convolution gets an input for the neighbour
    projection).  New inputs get zero weights, so the model starts out
    computing exactly what the checkpoint computed and learns to use the
    context from there.  A checkpoint that has a context already takes
    another reach (pixels, µm) with its weights as they are.
    frozen_stages: how many backbone stages stay frozen from here on
    (None: as in the checkpoint).
    """
    model, config = load_model(path)
    changes = {}
    if frozen_stages is not None and frozen_stages != config.frozen_stages:
        changes["frozen_stages"] = int(frozen_stages)  # only requires_grad differs
    for name, value in (("roi_context_px", roi_context_px), ("depth_context_um", depth_context_um)):
        if value and value != getattr(config, name):
            changes[name] = float(value)  # a new context adds inputs; another reach of one keeps the shapes
    if not changes:
        return model, config
    config = replace(config, **changes)
    rebuilt = build_model(config, pretrained=False)
    state, target = model.state_dict(), rebuilt.state_dict()
    for key, value in state.items():
        wanted = target[key].shape
        if value.shape != wanted:  # more inputs: zeros for the new ones
            extra = torch.zeros(value.shape[:1] + (wanted[1] - value.shape[1],) + value.shape[2:], dtype=value.dtype)
            state[key] = torch.cat([value, extra], dim=1)
    rebuilt.load_state_dict(state, strict=True)
    return rebuilt, config
