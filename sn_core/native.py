"""Build and load the compiled SN CPU kernels (sn_core/csrc: switch_norm.cpp, token_norm.cpp).

``python -m sn_core.native`` compiles the translation units into one library with the C++
compiler and torch's headers (``torch.utils.cpp_extension.include_paths``; no ninja, no CUDA)
into ``sn_core/csrc/build/``. The file name carries a digest of the sources (the shared header
included), torch's version and the flags, so a stale library is never loaded: a changed source or
torch simply means "not built".
Without a compiler the step logs one line and exits 0: the Python mixture is the fallback.

``load()`` registers ``torch.ops.normsearch_cpu`` at first use; when the library is absent or
fails to load it logs exactly one line (per process) and returns False.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

__all__ = ["KIND_CODES", "available", "build", "library_path", "load", "main"]

log = logging.getLogger("sn_core.native")

CSRC = Path(__file__).parent / "csrc"
# Compiled together into one library: the channel-first kernel and the token kernel.
SOURCES = (CSRC / "switch_norm.cpp", CSRC / "token_norm.cpp")
DIGESTED = (*SOURCES, CSRC / "rows.h")  # what the library's name depends on
BUILD_DIR = CSRC / "build"
# The enum Kind of the source.
KIND_CODES = {"in": 0, "ln": 1, "bn": 2, "gn": 3, "rms": 4}
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w")

_state: dict = {}  # "loaded": bool once load() has decided


def _compile_args() -> list[str]:
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    args = [*FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    args += [f"-I{path}" for path in cpp_extension.include_paths()]
    lib = Path(torch.__file__).parent / "lib"
    args += [f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10", "-ltorch_cpu", "-ltorch"]
    return args


def library_path(build_dir: Path | None = None) -> Path:
    """Where the library for this source, torch and flags lives (built or not)."""
    digest = hashlib.sha256()
    for path in DIGESTED:
        digest.update(path.read_bytes() if path.exists() else b"")
    digest.update(f"{torch.__version__}|{' '.join(FLAGS)}".encode())
    return Path(build_dir or BUILD_DIR) / f"libnormsearch_cpu-{digest.hexdigest()[:16]}.so"


def build(cxx: str | None = None, build_dir: Path | None = None) -> Path | None:
    """Compile the kernel unless already built; its path, or None (one log line) on failure."""
    target = library_path(build_dir)
    if target.exists():
        _remove_stale(target)
        return target
    compiler = cxx or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        log.warning("sn_core: no C++ compiler found; the SN layers use the Python mixture")
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    command = [compiler, *map(str, SOURCES), "-o", tmp, *_compile_args()]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except OSError as error:
        done = subprocess.CompletedProcess(command, 127, "", str(error))
    if done.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        lines = done.stderr.strip().splitlines()
        errors = [line for line in lines if "error" in line] or lines
        detail = errors[0] if errors else f"exit status {done.returncode}"
        log.warning(
            "sn_core: building the native CPU kernel failed (%s: %s); the SN layers use the "
            "Python mixture",
            compiler,
            detail,
        )
        return None
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)  # atomic: a concurrent loader sees the whole file or none
    _remove_stale(target)
    return target


def _remove_stale(target: Path) -> None:
    """Delete libraries built from other sources or for another torch."""
    for stale in target.parent.glob("libnormsearch_cpu-*.so"):
        if stale != target:
            stale.unlink(missing_ok=True)


def load(build_dir: Path | None = None) -> bool:
    """Register torch.ops.normsearch_cpu from a built library; False (one log line) if absent."""
    if "loaded" in _state:
        return _state["loaded"]
    path = library_path(build_dir)
    loaded = False
    if not path.exists():
        log.warning(
            "sn_core: native CPU kernel not built (run `python -m sn_core.native`); the SN "
            "layers use the Python mixture"
        )
    else:
        try:
            torch.ops.load_library(str(path))
            loaded = True
        except (OSError, RuntimeError) as error:
            log.warning(
                "sn_core: loading the native CPU kernel %s failed (%s); the SN layers use the "
                "Python mixture",
                path.name,
                error,
            )
    _state["loaded"] = loaded
    return loaded


def available() -> bool:
    """Whether the native kernel is loaded (loading it on first call)."""
    return load()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the SN native CPU kernel.")
    parser.add_argument("--cxx", help="C++ compiler (default: c++ or g++ on PATH)")
    parser.add_argument("--build-dir", type=Path, help=f"output folder (default: {BUILD_DIR})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    path = build(args.cxx, args.build_dir)
    if path is not None:
        log.info("sn_core: native CPU kernel ready: %s", path)
    return 0  # never fails the install: the Python mixture is the fallback


if __name__ == "__main__":
    raise SystemExit(main())
