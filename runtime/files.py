"""Writing output files all-or-nothing.

A run writes several files per input (CSV tables, a JSON summary, an overlay
PNG).  :func:`write_all` writes each to a temporary file in the target folder
and renames them into place only when all were written, so a failed or
interrupted run never leaves a half-written or partial set of outputs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import SpineDetError


def _default_mode() -> int:
    """The permission bits a plain ``open(path, "w")`` would give (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_all(contents: dict) -> list[Path]:
    """Write ``{path: bytes or str}`` atomically as a group; return the paths written.

    Raises SpineDetError naming the file that could not be written; then no
    file of the group is left behind (earlier files of the group are not
    replaced either).
    """
    staged: list[tuple[str, Path]] = []
    mode = _default_mode()
    try:
        for path, data in contents.items():
            path = Path(path)
            if isinstance(data, str):
                data = data.encode("utf-8")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
                staged.append((tmp, path))
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.chmod(tmp, mode)  # mkstemp makes files private (0600); outputs are ordinary files
            except OSError as exc:
                raise SpineDetError(f"cannot write output ({exc.strerror or exc})", path) from None
        for tmp, path in staged:
            os.replace(tmp, path)
        return [path for _, path in staged]
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def file_sha256(path) -> str:
    """SHA-256 of a file's contents, as hex (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
