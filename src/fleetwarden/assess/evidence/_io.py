"""Safe reading of bundle files: no symlinks, size limits, bounded directory walks.

Invariant: nothing under the bundle is followed through a symlink (the file itself or a
directory on its way), nothing bigger than its limit is read, and every refusal is an
:class:`EvidenceError` with a reason a person can act on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from fleetwarden.assess.errors import EvidenceError

MiB = 1024 * 1024
MAX_FILES_PER_DIR = 1_000_000
LIMITS = {
    "inventory": 4096 * MiB,
    "cert": 1 * MiB,
    "crl": 64 * MiB,
    "config": 4 * MiB,
    "network": 16 * MiB,
    "firmware": 64 * MiB,
    "json": 64 * MiB,
    "log": 512 * MiB,
    "doc": 4 * MiB,
    "key": 64 * 1024,
    "blocklist": 256 * MiB,
}


def rel(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def open_checked(path: Path, limit: int) -> tuple[int, int]:
    """Open a regular file without following a symlink; return (fd, size)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if path.is_symlink():
            raise EvidenceError("symlink refused") from exc
        raise EvidenceError(f"cannot open: {exc.strerror}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise EvidenceError("not a regular file")
    if st.st_size > limit:
        os.close(fd)
        raise EvidenceError(f"file is {st.st_size} bytes, limit {limit}")
    return fd, st.st_size


def read_bytes(path: Path, limit: int) -> bytes:
    fd, _ = open_checked(path, limit)
    with os.fdopen(fd, "rb") as fh:
        # read one byte more than the limit: the file may have grown since fstat
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise EvidenceError(f"file grew beyond the limit of {limit} bytes")
    return data


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without BOM) or BOM-marked UTF-16; anything else is refused."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise EvidenceError(f"invalid UTF-16 at byte {exc.start}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EvidenceError(f"not UTF-8 text (bad byte at offset {exc.start})") from exc
    if "\x00" in text:
        raise EvidenceError("text file contains NUL characters")
    return text


def read_text(path: Path, limit: int) -> str:
    return decode_text(read_bytes(path, limit))


def check_dir(path: Path) -> bool:
    """True when ``path`` is a real directory; a symlinked directory is refused."""
    if path.is_symlink():
        raise EvidenceError("symlinked directory refused")
    return path.is_dir()


def walk(root: Path, skip: tuple[str, ...] = ()) -> Iterator[tuple[Path, str | None]]:
    """Files under ``root`` in name order, each with None or the reason it is refused.

    Directories are not followed through symlinks; sub-directories named in ``skip``
    (relative to root) are left out.
    """
    count = 0
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            yield d, f"cannot list directory: {exc.strerror}"
            continue
        dirs = []
        for e in entries:
            p = Path(e.path)
            if e.is_symlink():
                yield p, "symlink refused"
            elif e.is_dir(follow_symlinks=False):
                if rel(root, p) not in skip:
                    dirs.append(p)
            elif e.is_file(follow_symlinks=False):
                count += 1
                if count > MAX_FILES_PER_DIR:
                    yield p, f"more than {MAX_FILES_PER_DIR} files; rest not read"
                    return
                if not e.name.startswith("."):
                    yield p, None
            else:
                yield p, "not a regular file"
        stack.extend(reversed(dirs))
