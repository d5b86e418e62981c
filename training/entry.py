"""Entry point of ``spine-train`` that fails with one clear line where torch is not installed."""

import sys


def train_main():
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        print("spine-train: error: training needs torch and torchvision: pip install 'spinedet[train]'",
              file=sys.stderr)
        sys.exit(2)
    from .train import main

    main()  # exits with the command's code
