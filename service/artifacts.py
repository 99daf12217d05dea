"""Stored job outputs: their SHA-256, and the directory checkpoints of older jobs.

A job records every output as the one file a download sends (the checkpoints are zip files the
worker writes), with that file's SHA-256 and size, computed once when the job is recorded. Jobs
recorded before that stored the checkpoint as a directory (and the SHA-256 of its weights
member): ``zipped_directory`` still serves one as a zip, built once next to the directory and
rebuilt only when the directory changed, with the SHA-256 of that zip (kept beside it), so a
download can always be checked against the header it came with.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomically(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def zipped_directory(directory: Path) -> tuple[Path, str]:
    """``<directory>.zip`` holding the directory's files at the archive root (the layout
    ``sn_core.load_finalized`` reads), written atomically, and its SHA-256."""
    directory = Path(directory)
    archive = directory.with_name(directory.name + ".zip")
    digest_file = archive.with_name(archive.name + ".sha256")
    files = sorted(p for p in directory.iterdir() if p.is_file())
    newest = max((p.stat().st_mtime for p in files), default=0.0)
    fresh = archive.exists() and archive.stat().st_mtime >= newest
    if fresh and digest_file.exists() and digest_file.stat().st_mtime >= archive.stat().st_mtime:
        return archive, digest_file.read_text().strip()
    if not fresh:

        def write_zip(fh) -> None:
            with zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in files:
                    zf.write(path, arcname=path.name)

        _write_atomically(archive, write_zip)
    digest = sha256_file(archive)
    _write_atomically(digest_file, lambda fh: fh.write(digest.encode()))
    return archive, digest
