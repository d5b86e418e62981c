"""Benchmarks run apart from the test suite: ``pytest bench/ --benchmark-only`` (see bench/README.md)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
