"""Which attention runs between bf16 products on a CPU, chosen by measurement once per host:
torch's (in bf16 or fp32) or kernels.cpp's (AVX-512 BF16, or AMX's tiles). batching.Forward asks
here and hands the pick to fast.DistilBertForward."""

from __future__ import annotations

import logging
from functools import lru_cache

import torch

from . import native
from .cpu import DTYPES, fastest
from .fast import torch_attention
from .precision_cache import kernel_choice

log = logging.getLogger(__name__)

# The batches cpu_attention times: (rows, width) of a CPU pass's 2048 tokens, from short windows to
# the longest, the last rows padded as in a length-sorted batch. (8 x 128 and 2 x 512 had tied torch's
# attention and the tiles on a Xeon with AMX, where whole forwards ran 1.1-1.3x faster on the tiles.)
ATTENTION_PROBES = ((16, 128), (8, 256), (4, 512))
ATTENTION_KERNELS = ("bf16", "fp32", "native", "tiles")


@lru_cache(maxsize=8)
def cpu_attention(heads: int, head_dim: int) -> str:
    """The fastest CPU attention between bf16 products: torch's in "bf16" or "fp32" (q, k, v cast up,
    the output back), or kernels.cpp's: "native" (AVX-512 BF16), "tiles" (AMX; heads of 32 to 128).
    Not the same everywhere (torch's fp32 beat its bf16 on an AVX-512 EPYC, its bf16 ran 2-3x its
    fp32 on a Xeon with AMX, the native kernel 2-3x torch's best on the EPYC: bench/RESULTS.md), so
    each is timed as the forward runs it, on batches of a pass's 2048 tokens, interleaved, median of
    5: about 1 s for 12 heads of 64, once per host (kept beside the precision choices). The native
    kernels must agree with torch's fp32 attention first, in every process."""
    probes: list = []  # built on first need: a cached torch pick needs none

    def batches() -> list:
        if not probes:
            probes.extend(_attention_probes(heads, head_dim))
        return probes

    def usable(kernel: str) -> bool:
        if kernel in ("bf16", "fp32"):
            return True
        return _native_candidate(kernel, head_dim) and _native_agrees(batches(), heads, tiles=kernel == "tiles")

    def measure():
        runs = {name: (lambda d=DTYPES[name]: [torch_attention(q, k, v, m, len(n), heads, d)
                                              for q, k, v, m, n in batches()]) for name in ("bf16", "fp32")}
        for kernel in ("native", "tiles"):
            if usable(kernel):
                runs[kernel] = lambda t=kernel == "tiles": [native.attention(q, k, v, n, heads, tiles=t)
                                                            for q, k, v, _, n in batches()]
        pick, median = fastest(runs)
        log.info("attention between bf16 products: %s (%s)", pick,
                 ", ".join(f"{name} {1000 * t:.1f} ms" for name, t in median.items()))
        return pick, median

    with torch.inference_mode():
        return kernel_choice(f"attention heads={heads} head_dim={head_dim}", measure, usable)


def _native_candidate(kernel: str, head_dim: int) -> bool:  # built here, for such heads
    if kernel == "tiles":
        return native.attention_tiles_available() and head_dim % 32 == 0 and head_dim <= 128
    return native.attention_available() and head_dim % 16 == 0 and head_dim <= 128


def _attention_probes(heads: int, head_dim: int) -> list:
    """(q, k, v, mask, lengths) of batches as the engine's CPU passes make them: 2048 tokens of rows
    of one width, the last half of the rows an eighth shorter."""
    gen = torch.Generator().manual_seed(0)
    probes = []
    for rows, width in ATTENTION_PROBES:
        q, k, v = (torch.randn(rows * width, heads * head_dim, generator=gen).to(torch.bfloat16) for _ in range(3))
        lengths = torch.full((rows,), width, dtype=torch.long)
        lengths[rows // 2:] = width - width // 8
        probes.append((q, k, v, torch.arange(width)[None, None, None, :] < lengths[:, None, None, None], lengths))
    return probes


def _native_agrees(probes: list, heads: int, tiles: bool = False) -> bool:
    """Whether the native kernel (tiles: its AMX one) computes torch's fp32 attention on the probe
    batches (rows that exist), to bf16's rounding: a kernel that built but computes wrong is no
    candidate."""
    for q, k, v, mask, lengths in probes:
        want = torch_attention(q, k, v, mask, len(lengths), heads, torch.float32).float()
        got = native.attention(q, k, v, lengths, heads, tiles=tiles).float().view_as(want)
        live = mask[:, 0, 0, :]
        if not torch.allclose(got[live], want[live], atol=0.03, rtol=0.03):
            log.warning("native attention%s disagrees with torch's here (largest difference %.3g): not a candidate",
                        " on AMX's tiles" if tiles else "", float((got[live] - want[live]).abs().max()))
            return False
    return True
