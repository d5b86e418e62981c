"""``python -m spinedet.training.synth``: the same as ``spine-synth``."""

import sys

from .cli import main

sys.exit(main())
