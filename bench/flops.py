"""What fraction of the host's peak the engine reaches: the model FLOPs of a forward pass over the
engine's windows, and the host's matrix-product peak measured at the model's own shapes.

Model FLOPs count what a plain forward computes (the convention of "model FLOPs utilisation"): per
layer and window of L tokens, 2·L·(4·d² + 2·d·F) for the linear layers and 4·L²·d for attention
scores and the weighted sum (d the width, F the feed-forward width). Work the engine skips (the
sentiment model's last layer beyond [CLS]) or wastes (padding) does not count, so the figure is what
the engine achieves for the text it was given.

The peak: the fastest of the model's linear shapes at 2048 rows, timed alone, per precision: bf16
through torch's Linear or through oneDNN with the weight packed once (packed.py, what the engine
runs), whichever is faster; int8 through each product int8.py offers here (torch._int_mm, oneDNN's
quantized Linear on packed weights, gemm.cpp's product on AVX2 or AMX's tiles), whichever is
fastest, the product alone as `Int8Linear.product` gives it (no quantizing; oneDNN and gemm.cpp on
the tiles apply the column scales as they write, as in the forward). Nothing the engine does can run its products faster than
that on this host with these kernels. A kernel int8.py does not offer (one running 10x or more
slower than the fastest) is not timed: at 2048 rows it could take minutes.
"""

from __future__ import annotations

import time

import torch

from worker.nlp import int8, packed


def model_flops(config, window_lengths: list[int]) -> float:
    """FLOPs of a plain forward over windows of these lengths (special tokens included)."""
    d = getattr(config, "dim", None) or config.hidden_size
    ffn = getattr(config, "hidden_dim", None) or config.intermediate_size
    layers = getattr(config, "n_layers", None) or config.num_hidden_layers
    total = 0.0
    for n in window_lengths:
        total += layers * (2 * n * (4 * d * d + 2 * d * ffn) + 4 * n * n * d)
    return total


def engine_flops(engine, texts: list[str]) -> float:
    """model_flops over the windows a loaded engine (worker.nlp) cuts these texts into."""
    from worker.nlp import batching

    opts = engine.options
    encoded = batching.encode(engine.tokenizer, [t[: opts.max_chars] for t in texts])
    windows = batching.make_windows(encoded, opts.max_length, opts.stride)
    return model_flops(engine.model.config, [len(w.ids) + 2 for w in windows])


def _seconds(fn, rounds: int = 10) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_peak(config, rows: int = 2048) -> dict[str, float]:
    """FLOP/s of the fastest linear shape of this model, per precision ("bf16", "int8", "fp32")."""
    d = getattr(config, "dim", None) or config.hidden_size
    ffn = getattr(config, "hidden_dim", None) or config.intermediate_size
    out: dict[str, float] = {}
    with torch.inference_mode():
        for d_in, d_out in ((d, d), (d, ffn), (ffn, d)):
            flops = 2 * rows * d_in * d_out
            x, w = torch.randn(rows, d_in), torch.randn(d_out, d_in)
            out["fp32"] = max(out.get("fp32", 0.0), flops / _seconds(lambda: torch.nn.functional.linear(x, w)))
            xb, wb = x.bfloat16(), w.bfloat16()
            out["bf16"] = max(out.get("bf16", 0.0), flops / _seconds(lambda: torch.nn.functional.linear(xb, wb)))
            if packed.available():
                layer = packed.PackedLinear(torch.nn.Linear(d_in, d_out, bias=False).bfloat16())
                out["bf16"] = max(out["bf16"], flops / _seconds(lambda: layer(xb)))
            if int8.available():
                xi = torch.randint(-127, 127, (rows, d_in), dtype=torch.int8)
                for kernel in int8.offered_kernels():
                    layer = int8.Int8Linear(torch.nn.Linear(d_in, d_out), kernel=kernel)
                    out["int8"] = max(out.get("int8", 0.0), flops / _seconds(lambda: layer.product(xi, torch.bfloat16)))
    return out
