"""Serving stored job outputs: a directory artifact (the finalized checkpoint) is sent as one zip
archive, built once next to the directory and rebuilt only when the directory changed."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path


def zipped_directory(directory: Path) -> Path:
    """``<directory>.zip`` holding the directory's files at the archive root (the layout
    ``sn_core.load_finalized`` reads), written atomically."""
    directory = Path(directory)
    archive = directory.with_name(directory.name + ".zip")
    files = sorted(p for p in directory.iterdir() if p.is_file())
    newest = max((p.stat().st_mtime for p in files), default=0.0)
    if archive.exists() and archive.stat().st_mtime >= newest:
        return archive
    fd, tmp = tempfile.mkstemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".zip")
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                zf.write(path, arcname=path.name)
        os.replace(tmp, archive)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return archive
