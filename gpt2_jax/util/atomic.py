"""Whole-file writes that a crash, a kill or another process never leaves half done."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_bytes(path: str | os.PathLike, *chunks: bytes) -> None:
    """Write `chunks` to `path` through a temp file beside it, renamed into place. The temp file
    has a name no other writer holds (hosts share disks, and a PID alone is not unique across
    them): processes writing the same file at once each rename a whole one, and the last wins.
    Unlike mkstemp's private files, it gets the usual permissions, so shards stay readable."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """write_bytes for UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))
