"""spinedet.runtime: the lean part of spinedet that runs on the acquisition PC.

No torch here, ever: numpy, onnxruntime (or TensorRT) and tifffile only.
"""

from .errors import SpineDetError

__all__ = ["SpineDetError"]
