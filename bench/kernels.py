"""What this machine's kernels can do: throughput of DistilBERT-base's matrix products and of
attention, per precision. It bounds what any engine can gain over float32 here.

    python bench/kernels.py

Linear: the shapes of DistilBERT-base (768 -> 768 for q/k/v/out, 768 -> 3072 for the feed-forward),
rows = tokens in a batch. Attention: torch's scaled_dot_product_attention, 12 heads of 64; then
attention as the forward runs it (torch's, or kernels.cpp's where the CPU has AVX-512 BF16).
Also int8: torch.ao's dynamic quantization (one activation scale per batch), and the engine's
int8.Int8Linear (one scale per token, C++ quantize/dequantize around torch._int_mm), each timed
whole, quantizing included.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import machine, now  # noqa: E402
from worker.nlp import int8 as int8_kernels  # noqa: E402


def seconds(fn, rounds: int = 5) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - started) / rounds


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    print(f"# {machine()}; {now()}")
    int8_kernels.available()
    print(f"{'kernel':44} {'fp32 GFLOP/s':>12} {'bf16 GFLOP/s':>12} {'bf16/fp32':>9} {'ao int8 GOP/s':>13} "
          f"{'token int8 GOP/s':>16} {'token int8/bf16':>15}")
    with torch.inference_mode():
        for rows in (512, 2048, 8192):
            for d_in, d_out, name in ((768, 768, "q/k/v/out"), (768, 3072, "feed-forward in"), (3072, 768, "feed-forward out")):
                flops = 2 * rows * d_in * d_out
                x = torch.randn(rows, d_in)
                lin = torch.nn.Linear(d_in, d_out)
                fp32 = seconds(lambda: lin(x))
                lin16, x16 = torch.nn.Linear(d_in, d_out).to(torch.bfloat16), x.to(torch.bfloat16)
                bf16 = seconds(lambda: lin16(x16))
                q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                           dtype=torch.qint8)
                int8 = seconds(lambda: q(x))
                per_token = int8_kernels.Int8Linear(lin16)
                tok8 = seconds(lambda: per_token(x16))
                print(f"{f'linear {name}, {rows} rows':44} {flops / fp32 / 1e9:12.0f} {flops / bf16 / 1e9:12.0f} "
                      f"{fp32 / bf16:9.2f} {flops / int8 / 1e9:13.0f} {flops / tok8 / 1e9:16.0f} {bf16 / tok8:15.2f}")
        for batch, width in ((64, 128), (16, 512)):
            flops = 4 * batch * 12 * width * width * 64
            q = torch.randn(batch, 12, width, 64)
            fp32 = seconds(lambda: F.scaled_dot_product_attention(q, q, q))
            q16 = q.to(torch.bfloat16)
            bf16 = seconds(lambda: F.scaled_dot_product_attention(q16, q16, q16))
            print(f"{f'attention {batch} x {width} tokens':44} {flops / fp32 / 1e9:12.0f} {flops / bf16 / 1e9:12.0f} "
                  f"{fp32 / bf16:9.2f}")
        attention_in_the_forward()


def attention_in_the_forward() -> None:
    """Attention as the engine's forward runs it, from the products' layout (tokens x 768, bf16) to
    the output's: torch's in bf16 and in fp32 (heads split, cast, and back), and kernels.cpp's
    (native.attention: AVX-512 BF16, and on AMX's tiles), with one row in four a third shorter (a
    length-sorted batch's padding)."""
    from worker.nlp import fast, native

    print(f"{'attention in the forward (products layout)':44} {'torch fp32':>12} {'torch bf16':>12} {'native':>9} "
          f"{'tiles':>9} {'best own/best torch':>19}  (GFLOP/s)")
    for batch, width in ((16, 128), (8, 256), (4, 512)):
        q, k, v = (torch.randn(batch * width, 768).to(torch.bfloat16) for _ in range(3))
        lengths = torch.full((batch,), width, dtype=torch.long)
        lengths[::4] = width - width // 3
        mask = (torch.arange(width)[None, :] < lengths[:, None])[:, None, None, :]
        flops = 4 * 12 * 64 * float((lengths * lengths).sum())
        fp32 = seconds(lambda: fast.torch_attention(q, k, v, mask, batch, 12, torch.float32), rounds=10)
        bf16 = seconds(lambda: fast.torch_attention(q, k, v, mask, batch, 12, torch.bfloat16), rounds=10)
        own = seconds(lambda: native.attention(q, k, v, lengths, 12), rounds=10) if native.attention_available() \
            else float("nan")
        tiles = seconds(lambda: native.attention(q, k, v, lengths, 12, tiles=True), rounds=10) \
            if native.attention_tiles_available() else float("nan")
        best = min((t for t in (own, tiles) if t == t), default=float("nan"))
        print(f"{f'  {batch} x {width} tokens':44} {flops / fp32 / 1e9:12.0f} {flops / bf16 / 1e9:12.0f} "
              f"{flops / own / 1e9:9.0f} {flops / tiles / 1e9:9.0f} {min(fp32, bf16) / best:19.2f}")


if __name__ == "__main__":
    main()
