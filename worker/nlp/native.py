"""The C++ kernels of int8.py (int8_kernels.cpp): built once per host, kept in REVIEWS_HOME, loaded
as torch ops (torch.ops.reviews_int8.*).

Why not torch.compile, which built them before: it compiled the four kernels again in every new
process, 5.5-6.8 s of each worker's start on an int8 host (2.8 s of it importing torch's compiler),
and its kernels ran slower than these (bench/RESULTS.md). A built library loads in milliseconds.

The build uses the host's C++ compiler (CXX, else g++, else c++) with -march=native, so the library
is specific to the CPU: its file name carries a hash of the source, torch's version and ABI, the
compiler, the flags, the CPU model and its feature flags. A host that differs in any of those
builds its own (about 7-12 s, once); a lock makes processes that start together build it once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from .cpu import cpu_flags, cpu_model_name
from .precision_cache import locked

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("int8_kernels.cpp")
NAMESPACE = "reviews_int8"
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=c++20", "-w")
BUILD_TIMEOUT_S = 600


class BuildError(RuntimeError):
    """The kernels could not be built here: no compiler, no headers, a compiler error."""


def compiler() -> str:
    """The C++ compiler to use: $CXX, else g++, else c++."""
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise BuildError("no C++ compiler found (set CXX, or install g++)")


def library_path(cxx: str) -> Path:
    """Where the library built by `cxx` for this source, torch and CPU lives."""
    from ..config import home_dir

    parts = [SOURCE.read_bytes(), torch.__version__.encode(), str(torch._C._GLIBCXX_USE_CXX11_ABI).encode(),
             cxx.encode(), " ".join(FLAGS).encode(), cpu_model_name().encode(), " ".join(sorted(cpu_flags())).encode()]
    digest = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    return home_dir() / "cache" / "kernels" / f"{NAMESPACE}-{digest}.so"


def build(out: Path, cxx: str) -> float:
    """Compile the source into `out` (through a temporary file: a reader never sees half a library).
    Returns the seconds it took."""
    from torch.utils import cpp_extension  # build-time only: it imports setuptools

    out.parent.mkdir(parents=True, exist_ok=True)
    libs = cpp_extension.library_paths()
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}-", suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cxx, *FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           *(f"-I{p}" for p in cpp_extension.include_paths()), str(SOURCE), "-o", tmp,
           *(f"-L{p}" for p in libs), "-lc10", "-ltorch_cpu", *(f"-Wl,-rpath,{p}" for p in libs)]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
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


def loaded() -> bool:
    return hasattr(torch.ops, NAMESPACE) and hasattr(getattr(torch.ops, NAMESPACE), "quantize")


def load() -> None:
    """Make torch.ops.reviews_int8 available: the cached library, or one built now. Raises BuildError."""
    if loaded():  # a namespace registers once per process
        return
    cxx = compiler()
    path = library_path(cxx)
    if not path.exists():
        with locked(path):  # another process may be building it
            if not path.exists():
                log.info("building the int8 kernels for this host (once per CPU and torch version): %s", path)
                log.info("int8 kernels built in %.1f s", build(path, cxx))
    torch.ops.load_library(str(path))
