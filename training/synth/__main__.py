"""``python -m spinedet.training.synth``: the same as ``spine-synth``."""

from .cli import main

main()
