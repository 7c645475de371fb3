"""Building the project's C++ sources into shared libraries, once per host, kept in REVIEWS_HOME.

The build uses the host's C++ compiler (CXX, else g++, else c++), usually with -march=native, so a
library is specific to the CPU: its file name carries a hash of the source, the compiler, the flags,
the CPU model and its feature flags. A host that differs in any of those builds its own; a lock
makes processes that start together build it once. No torch here: the language detector
(language.py) builds through this module in processes that never import torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .host import cpu_flags, cpu_model_name

log = logging.getLogger(__name__)

BUILD_TIMEOUT_S = 120


class BuildError(RuntimeError):
    """A library could not be built here: no compiler, a compiler error."""


def compiler() -> str:
    """The C++ compiler to use: $CXX, else g++, else c++."""
    for name in (os.environ.get("CXX"), "g++", "c++"):
        found = shutil.which(name) if name else None
        if found:
            return found
    raise BuildError("no C++ compiler found (set CXX, or install g++)")


_LOCAL_INCLUDE = re.compile(rb'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def sources(source: Path) -> list[Path]:
    """`source` and the headers it includes with quotes (#include "x.h", beside it), and theirs: what
    a build reads from the project, so that a change to a shared header builds again."""
    found, todo = [], [source]
    while todo:
        path = todo.pop()
        if path in found:
            continue
        found.append(path)
        todo += [path.parent / name.decode() for name in _LOCAL_INCLUDE.findall(path.read_bytes())]
    return found


def library_path(source: Path, flags: tuple[str, ...], cxx: str) -> Path:
    """Where the library built by `cxx` with `flags` for `source` (and its headers) and this CPU lives."""
    from .config import home_dir

    parts = [*(path.read_bytes() for path in sources(source)), cxx.encode(), " ".join(flags).encode(), cpu_model_name().encode(),
             " ".join(sorted(cpu_flags())).encode()]
    digest = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    return home_dir() / "cache" / "kernels" / f"{source.stem}-{digest}.so"


def build(source: Path, flags: tuple[str, ...], out: Path, cxx: str) -> float:
    """Compile `source` into `out` (through a temporary file: a reader never sees half a library).
    Returns the seconds it took."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}-", suffix=".so", dir=out.parent)
    os.close(fd)
    started = time.perf_counter()
    try:
        done = subprocess.run([cxx, *flags, str(source), "-o", tmp], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise BuildError(f"{Path(cxx).name} failed (exit {done.returncode}): " + " | ".join(tail))
        os.replace(tmp, out)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{Path(cxx).name} ran over {BUILD_TIMEOUT_S} s") from exc
    except OSError as exc:
        raise BuildError(f"cannot run {cxx}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return time.perf_counter() - started


def load(source: Path, flags: tuple[str, ...], what: str) -> ctypes.CDLL:
    """The library of `source`: the cached build for this host, or one built now. Raises BuildError
    (or OSError where the built file cannot be loaded)."""
    cxx = compiler()
    path = library_path(source, flags, cxx)
    if not path.exists():
        with locked(path):  # another process may be building it
            if not path.exists():
                log.info("building the %s for this CPU (once): %s", what, path)
                log.info("%s built in %.1f s", what, build(source, flags, path, cxx))
    return ctypes.CDLL(str(path))


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock beside `path` for a read-build-write (or read-measure-write), where the OS
    has one; without it (no fcntl, unwritable directory) processes simply may do the work twice."""
    lock = None
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a")
        fcntl.flock(lock, fcntl.LOCK_EX)
    except (ImportError, OSError):
        pass
    try:
        yield
    finally:
        if lock is not None:
            lock.close()  # closing releases the lock
