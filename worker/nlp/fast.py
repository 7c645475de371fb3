"""An inference-only forward pass for DistilBERT classifiers, on the model's own weights.

The math is that of transformers' DistilBERT; what differs is what gets computed and at what precision:

- The residual stream, the embeddings and every LayerNorm stay in float32; only the matrix products
  (the Linear layers and attention) run in the compute dtype (bf16 on CPUs with AVX-512 BF16).
  The Linear weights are cast once at load time instead of on every call, and are stored in bf16,
  so the model takes half the memory. Autocast, by contrast, kept the whole residual stream in bf16.
- A sequence classifier reads only the [CLS] position of the last layer, so the last layer computes
  keys and values for every token but the query, the attention output, and the feed-forward block
  for [CLS] alone: about 5/6 of one layer's work is skipped.
- Attention is torch's scaled_dot_product_attention with a key-padding mask, and no mask at all
  when a batch has no padding (its fastest kernel). On CUDA, never cuDNN's: it builds an execution
  plan for every new batch shape, and a worker meets new shapes all the time (on an H100 the
  engine's first pass over 1,024 reviews ran at a third of the speed of a second over the same
  batches; bench/RESULTS.md, "GPU"). Flash attention (no padding) and the memory-efficient kernel
  (padding) need no plans.

Any other architecture runs through transformers' own forward (see `forward_for`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger(__name__)

# The attention kernels allowed on CUDA: all but cuDNN's (see the module's docstring).
CUDA_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
# The batches cpu_attention_dtype times: (rows, width) of 1024 tokens, a typical review and the
# longest window, the last rows padded as in a length-sorted batch.
ATTENTION_PROBES = ((8, 128), (2, 512))


@lru_cache(maxsize=8)
def cpu_attention_dtype(heads: int, head_dim: int) -> torch.dtype:
    """The faster dtype for CPU attention between bf16 products: bf16, or fp32 (q, k and v cast up,
    the output cast back). Not the same everywhere: fp32 ran 5-9% faster on an AVX-512 EPYC, bf16
    2-3x faster on a Xeon with AMX, whose tiles run flash attention's bf16 products
    (bench/RESULTS.md). Timed once per process on both probe batches, interleaved, median of 5:
    about 0.1 s for DistilBERT-base's 12 heads of 64."""
    gen = torch.Generator().manual_seed(0)
    probes = []
    for rows, width in ATTENTION_PROBES:
        q, k, v = (torch.randn(rows, heads, width, head_dim, generator=gen).to(torch.bfloat16) for _ in range(3))
        mask = torch.ones(rows, 1, 1, width, dtype=torch.bool)
        mask[rows // 2:, ..., width - width // 8:] = False
        probes.append((q, k, v, mask))
    runs = {
        torch.bfloat16: lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
        torch.float32: lambda q, k, v, m: F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=m).to(torch.bfloat16),
    }
    times: dict[torch.dtype, list[float]] = {dt: [] for dt in runs}
    with torch.inference_mode():
        for run in runs.values():
            run(*probes[0])
        for _ in range(5):
            for dt, run in runs.items():
                started = time.perf_counter()
                for probe in probes:
                    run(*probe)
                times[dt].append(time.perf_counter() - started)
    median = {dt: sorted(t)[len(t) // 2] for dt, t in times.items()}
    pick = min(median, key=median.get)
    log.info("attention between bf16 products: %s (bf16 %.1f ms, fp32 %.1f ms)", str(pick).removeprefix("torch."),
             1000 * median[torch.bfloat16], 1000 * median[torch.float32])
    return pick


def supports(model) -> bool:
    """A DistilBERT with a sequence or token classification head, laid out as transformers has
    done since its first release."""
    from .distilbert import Classifier

    if isinstance(model, Classifier):  # built for this forward (distilbert.py)
        return True
    base = getattr(model, "distilbert", None)
    if base is None or getattr(model.config, "model_type", "") != "distilbert":
        return False
    head_ok = hasattr(model, "classifier") and (
        type(model).__name__ == "DistilBertForTokenClassification"
        or (type(model).__name__ == "DistilBertForSequenceClassification" and hasattr(model, "pre_classifier"))
    )
    try:
        layer = base.transformer.layer[0]
        parts = (layer.attention.q_lin, layer.attention.k_lin, layer.attention.v_lin, layer.attention.out_lin,
                 layer.sa_layer_norm, layer.ffn.lin1, layer.ffn.lin2, layer.ffn.activation, layer.output_layer_norm,
                 base.embeddings.word_embeddings, base.embeddings.position_embeddings, base.embeddings.LayerNorm)
    except AttributeError:
        return False
    return head_ok and all(p is not None for p in parts)


def cast_linears(model, dtype: torch.dtype) -> None:
    """Store every Linear layer's weights in `dtype`; embeddings and LayerNorms keep float32."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.to(dtype)


def replace_linears(model: nn.Module, replace, keep: tuple[str, ...] = ("classifier",)) -> int:
    """Put `replace(linear, full_name)` in the place of every nn.Linear of `model` whose dotted name
    does not end with one of `keep` (the classification head, and pre_classifier: a few rows, and
    where rounding moves the output directly). Returns how many were replaced."""
    replaced = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if isinstance(child, nn.Linear) and not full.endswith(keep):
                setattr(parent, name, replace(child, full))
                replaced += 1
    return replaced


class DistilBertForward:
    """logits = forward(input_ids, attention_mask), float32, for a DistilBERT classifier."""

    def __init__(self, model, per_token: bool, cls_only: bool = True, attention_dtype: torch.dtype | None = None,
                 marking=None):
        self.model = model
        # casing.CaseMarking of the "added" style: ids carry each piece's case (casing.py).
        self.marking = marking if marking is not None and marking.style == "added" else None
        self.cls_only = cls_only and not per_token  # the last layer for [CLS] alone (sequence heads)
        self.base = model.distilbert
        self.layers = list(self.base.transformer.layer)
        self.n_heads = model.config.n_heads
        self.per_token = per_token
        weight = getattr(model.classifier, "weight", None)
        # The compute dtype of the matrix products; quantized Linears take float32 input.
        self.dtype = weight.dtype if isinstance(weight, torch.Tensor) else torch.float32
        # The dtype of q, k and v in attention: that of the products unless told (batching.Forward).
        self.attention_dtype = attention_dtype or self.dtype

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 full: bool | None = None) -> torch.Tensor:
        emb = self.base.embeddings
        width = input_ids.shape[1]
        words = emb.word_embeddings(input_ids) if self.marking is None else self.marking.embed(emb.word_embeddings, input_ids)
        h = words + emb.position_embeddings.weight[:width]
        h = emb.LayerNorm(h.float())
        keep = attention_mask.bool()
        if full is None:
            full = bool(keep.all())
        mask = None if full else keep[:, None, None, :]  # (batch, 1, 1, keys): True = attend
        last = len(self.layers) - 1
        kernels = sdpa_kernel(CUDA_ATTENTION) if h.is_cuda else contextlib.nullcontext()
        with kernels:
            for i, layer in enumerate(self.layers):
                h = self._layer(layer, h, mask, cls_only=self.cls_only and i == last)
        if self.per_token:
            return self.model.classifier(h.to(self.dtype)).float()
        pooled = F.relu(self.model.pre_classifier(h[:, 0].to(self.dtype)))
        return self.model.classifier(pooled).float()

    def _layer(self, layer, h: torch.Tensor, mask: torch.Tensor | None, cls_only: bool) -> torch.Tensor:
        att, dt = layer.attention, self.dtype
        batch, width, dim = h.shape
        x = h.to(dt)
        residual = h[:, :1] if cls_only else h
        queries = x[:, :1] if cls_only else x

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, self.n_heads, dim // self.n_heads).transpose(1, 2)

        q, k, v = heads(att.q_lin(queries)), heads(att.k_lin(x)), heads(att.v_lin(x))
        at = self.attention_dtype
        q, k, v = q.to(at), k.to(at), v.to(at)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        a = att.out_lin(a.transpose(1, 2).reshape(batch, -1, dim).to(dt))
        # residual (float32) + a (bf16) promotes to float32 in one pass, where a.float() took a second.
        h = layer.sa_layer_norm(residual + a)
        ffn = layer.ffn
        f = ffn.lin2(ffn.activation(ffn.lin1(h.to(dt))))
        return layer.output_layer_norm(h + f)
