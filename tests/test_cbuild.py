"""worker/cbuild.py: which files a build reads, so that a changed shared header builds again."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker import cbuild


def test_a_change_to_an_included_header_moves_the_library(tmp_path: Path):
    (tmp_path / "kernel.cpp").write_text('#include <cstdint>\n#include "shared.h"\nint f() { return g(); }\n')
    (tmp_path / "shared.h").write_text('#pragma once\n  # include "deeper.h"\ninline int g() { return h(); }\n')
    (tmp_path / "deeper.h").write_text("#pragma once\ninline int h() { return 1; }\n")
    source = tmp_path / "kernel.cpp"
    assert sorted(p.name for p in cbuild.sources(source)) == ["deeper.h", "kernel.cpp", "shared.h"]
    before = cbuild.library_path(source, ("-O2",), "g++")
    (tmp_path / "deeper.h").write_text("#pragma once\ninline int h() { return 2; }\n")
    after = cbuild.library_path(source, ("-O2",), "g++")
    assert before != after and before.parent == after.parent


def test_the_project_kernels_list_the_header_they_share():
    nlp = Path(cbuild.__file__).parent / "nlp"
    for name in ("kernels.cpp", "gemm.cpp"):
        assert nlp / "amx.h" in cbuild.sources(nlp / name)


def test_the_kernels_build_for_a_cpu_without_avx2(tmp_path: Path):
    """A host without AVX2 (or without AVX-512, AMX) compiles the fallbacks: the #else branches are
    code only such a CPU sees, and a mistake there (gemm.cpp's once named a variable that only
    its AVX2 branch declares) would cost it the library without a test noticing."""
    import platform
    import shutil

    if platform.machine() not in ("x86_64", "AMD64") or not shutil.which("g++"):
        pytest.skip("needs g++ on x86-64")
    nlp = Path(cbuild.__file__).parent / "nlp"
    for name in ("kernels.cpp", "gemm.cpp"):
        flags = ("-O1", "-march=x86-64", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
        cbuild.build(nlp / name, flags, tmp_path / f"{Path(name).stem}.so", "g++")
