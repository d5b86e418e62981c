"""spinedet.runtime: the lean part of spinedet that runs on the acquisition PC.

No torch here, ever: numpy, onnxruntime (or TensorRT) and tifffile only.

>>> from spinedet.runtime import SpineDetector, open_stack
>>> detector = SpineDetector()                       # the shipped default model
>>> with open_stack("stack.tif") as stack:
...     result = detector.detect(stack)
>>> [(s.spine_id, s.z_first, s.z_last) for s in result.spines]
"""

from .detector import DetectionResult, SliceStream, SpineDetector, default_model_path, shipped_model_path
from .errors import SpineDetError
from .spines import Spine
from .stacks import Stack, VoxelSize, open_stack, read_image

__all__ = ["SpineDetector", "SliceStream", "DetectionResult", "Spine", "SpineDetError", "Stack", "VoxelSize",
           "open_stack", "read_image", "default_model_path", "shipped_model_path"]
