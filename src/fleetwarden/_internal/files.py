"""Writing files safely: atomic replace, and 0600 for anything that holds a secret."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half.

    The temporary file is created with ``mode`` from the start, so a secret is never
    readable by others even for an instant.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_secret(path: Path, data: bytes) -> None:
    """Write a file holding key material or tokens: mode 0600, atomic."""
    atomic_write(path, data, mode=0o600)


def ensure_private_dir(path: Path) -> None:
    """Create a directory readable only by its owner (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
