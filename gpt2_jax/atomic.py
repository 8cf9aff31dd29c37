"""Whole-file writes that a crash, a kill or another process never leaves half done."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes(path: str | os.PathLike, *chunks: bytes) -> None:
    """Write `chunks` to `path` through a temp file beside it, renamed into place. The temp file
    has a name no other writer holds (hosts share disks, and a PID alone is not unique across
    them): processes writing the same file at once each rename a whole one, and the last wins."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """write_bytes for UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))
