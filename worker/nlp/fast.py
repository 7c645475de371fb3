"""An inference-only forward pass for DistilBERT classifiers, on the model's own weights.

The math is that of transformers' DistilBERT; what differs is what gets computed and at what precision:

- The residual stream, the embeddings and every LayerNorm stay in float32; only the matrix products
  (the Linear layers and attention) run in the compute dtype (bf16 on CPUs with AVX-512 BF16).
  The Linear weights are cast once at load time instead of on every call, and are stored in bf16,
  so the model takes half the memory. Autocast, by contrast, kept the whole residual stream in bf16.
- A sequence classifier reads only the [CLS] position of the last layer, so the last layer computes
  keys and values for every token but the query, the attention output, and the feed-forward block
  for [CLS] alone: about 5/6 of one layer's work is skipped.
- Attention on CPU is whichever attention.cpu_attention measured fastest on the host: kernels.cpp's
  (AVX-512 BF16 or AMX's tiles; it reads q, k and v where the products left them and skips the
  padding), or
  torch's scaled_dot_product_attention in bf16 or fp32. torch's gets a key-padding mask, and no
  mask at all when a batch has no padding (its fastest kernel). On CUDA, never cuDNN's: it builds an execution
  plan for every new batch shape, and a worker meets new shapes all the time (on an H100 the
  engine's first pass over 1,024 reviews ran at a third of the speed of a second over the same
  batches; bench/RESULTS.md, "GPU"). Flash attention (no padding) and the memory-efficient kernel
  (padding) need no plans.

Any other architecture runs through transformers' own forward (see `forward_for`).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import gpu_layer, native


# The attention kernels allowed on CUDA: all but cuDNN's (see the module's docstring).
CUDA_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


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


def torch_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, batch: int,
                    heads: int, dtype: torch.dtype) -> torch.Tensor:
    """torch's attention over the heads of q, k, v (batch * positions, dim), computed in `dtype`:
    (batch, positions of q, dim) in q's dtype."""
    dim = k.shape[-1]

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, -1, heads, dim // heads).transpose(1, 2).to(dtype)

    a = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return a.transpose(1, 2).reshape(batch, -1, dim).to(q.dtype)


def prefix_lengths(keep: torch.Tensor) -> torch.Tensor | None:
    """Each row's length where every row of the mask is padded on the right only (as batching.pack
    builds them) and none is empty; None otherwise."""
    lengths = keep.sum(1)
    if int(lengths.min()) < 1 or not bool((keep == (torch.arange(keep.shape[1]) < lengths[:, None])).all()):
        return None
    return lengths


class DistilBertForward:
    """logits = forward(input_ids, attention_mask), float32, for a DistilBERT classifier.

    On CPU, where kernels.cpp builds (native.py), the steps between the products are its fused
    passes: for float products, the residual add, LayerNorm and cast to the products' dtype in one
    pass; for int8 products (int8.py) every step from one product to the next, so that activations
    go from one layer's product to the next layer's quantized input without torch in between. On
    CUDA every layer is gpu_layer.layer: add + LayerNorm + cast in one Triton kernel, GELU in the
    product's epilogue."""

    def __init__(self, model, per_token: bool, cls_only: bool = True, attention_dtype: torch.dtype | None = None,
                 marking=None, fused: bool | None = None, native_attention: bool = False,
                 attention_tiles: bool = False):
        """fused: use kernels.cpp's passes on CPU (default: where they build). native_attention: on
        CPU, with bf16 products, kernels.cpp's attention (native.attention) for batches padded on the
        right, instead of torch's in attention_dtype; attention_tiles: its kernel on AMX's tiles."""
        self.model = model
        # casing.CaseMarking of the "added" style: ids carry each piece's case (casing.py).
        self.marking = marking if marking is not None and marking.style == "added" else None
        self.cls_only = cls_only and not per_token  # the last layer for [CLS] alone (sequence heads)
        self.base = model.distilbert
        self.layers = list(self.base.transformer.layer)
        self.n_heads = model.config.n_heads
        self.per_token = per_token
        weight = getattr(model.classifier, "weight", None)
        # The compute dtype of the matrix products (int8 layers: of the activations around them).
        self.dtype = weight.dtype if isinstance(weight, torch.Tensor) else torch.float32
        # The dtype of q, k and v in attention: that of the products unless told (batching.Forward).
        self.attention_dtype = attention_dtype or self.dtype
        self.fused = fused  # None: decided at the first call on CPU (a CUDA worker never builds them)
        self.native_attention = native_attention and self.dtype == torch.bfloat16
        self.attention_tiles = attention_tiles
        ffn = self.layers[0].ffn
        # int8.Int8Linear layers (known by their `product`: int8.py imports this module, not the
        # reverse). The int8 layer's fused passes know one feed-forward: GELU, then lin2 quantized
        # around its midrange.
        self.int8 = (callable(getattr(ffn.lin1, "product", None)) and getattr(ffn.lin2, "centered", False)
                     and getattr(model.config, "activation", "gelu") == "gelu")

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
        # native attention reads each row's length instead of the mask
        lengths = None
        if self.native_attention and not h.is_cuda:
            lengths = torch.full((h.shape[0],), width, dtype=torch.long) if full else prefix_lengths(keep)
        last = len(self.layers) - 1
        if self.fused is None and not h.is_cuda:
            self.fused = native.available()
        fused = bool(self.fused) and not h.is_cuda
        kernels = sdpa_kernel(CUDA_ATTENTION) if h.is_cuda else contextlib.nullcontext()
        with kernels:
            if fused and self.int8:
                x = native.quantize(h.view(-1, h.shape[-1]))
                for i, layer in enumerate(self.layers):
                    h, x = self._int8_layer(layer, h, x, mask, lengths, self.cls_only and i == last, i == last)
            elif fused:
                x = h.to(self.dtype)
                for i, layer in enumerate(self.layers):
                    h, x = self._fused_layer(layer, h, x, mask, lengths, self.cls_only and i == last)
            elif h.is_cuda:
                x = h.to(self.dtype)
                for i, layer in enumerate(self.layers):
                    h, x = gpu_layer.layer(layer, h, x, mask, self.cls_only and i == last, self.dtype, self._attend)
            else:
                for i, layer in enumerate(self.layers):
                    h = self._layer(layer, h, mask, lengths, cls_only=self.cls_only and i == last)
        if self.per_token:
            return self.model.classifier(h.to(self.dtype)).float()
        pooled = F.relu(self.model.pre_classifier(h[:, 0].to(self.dtype)))
        return self.model.classifier(pooled).float()

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   lengths: torch.Tensor | None, batch: int, dim: int) -> torch.Tensor:
        """Attention over the heads of q, k, v (batch * positions, dim): (batch, positions of q, dim)
        in the products' dtype. lengths: each row's, for the native kernel (None: torch's)."""
        if lengths is not None:
            a = native.attention(q.reshape(-1, dim), k.reshape(-1, dim), v.reshape(-1, dim), lengths, self.n_heads,
                                 tiles=self.attention_tiles)
            return a.view(batch, -1, dim)
        return torch_attention(q, k, v, mask, batch, self.n_heads, self.attention_dtype).to(self.dtype)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                batch: int) -> torch.Tensor:
        """torch's attention over (batch, positions, dim) views of q, k and v (gpu_layer.layer)."""
        return self._attention(q, k, v, mask, None, batch, k.shape[-1])

    def _layer(self, layer, h: torch.Tensor, mask: torch.Tensor | None, lengths: torch.Tensor | None,
               cls_only: bool) -> torch.Tensor:
        """One layer in torch ops: CPUs without the fused passes; any Linear layers."""
        att, dt = layer.attention, self.dtype
        batch, width, dim = h.shape
        x = h.to(dt)
        residual = h[:, :1] if cls_only else h
        queries = x[:, :1] if cls_only else x
        a = att.out_lin(self._attention(att.q_lin(queries), att.k_lin(x), att.v_lin(x), mask, lengths, batch, dim))
        # residual (float32) + a (bf16) promotes to float32 in one pass, where a.float() took a second.
        h = layer.sa_layer_norm(residual + a)
        ffn = layer.ffn
        f = ffn.lin2(ffn.activation(ffn.lin1(h.to(dt))))
        return layer.output_layer_norm(h + f)

    def _fused_layer(self, layer, h: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None,
                     lengths: torch.Tensor | None, cls_only: bool):
        """One layer on CPU with float products: (h, x) in, h the float32 residual stream and x the
        same in the products' dtype; add + LayerNorm + cast as one pass of kernels.cpp."""
        att, ffn = layer.attention, layer.ffn
        batch, width, dim = h.shape
        residual = h[:, :1] if cls_only else h
        queries = x[:, :1] if cls_only else x
        a = att.out_lin(self._attention(att.q_lin(queries), att.k_lin(x), att.v_lin(x), mask, lengths, batch, dim))
        sa, out = layer.sa_layer_norm, layer.output_layer_norm
        h, x = native.add_norm(residual.reshape(-1, dim).contiguous(), a.view(-1, dim), sa.weight, sa.bias, sa.eps)
        f = ffn.lin2(ffn.activation(ffn.lin1(x)))
        h, x = native.add_norm(h, f.view(-1, dim), out.weight, out.bias, out.eps)
        return h.view(batch, -1, dim), x.view(batch, -1, dim)

    def _int8_layer(self, layer, h: torch.Tensor, x: tuple, mask: torch.Tensor | None, lengths: torch.Tensor | None,
                    cls_only: bool, last: bool):
        """One layer of int8 products (int8.Int8Linear) on CPU: x is h quantized per token, (q, scale),
        made by the previous layer's last pass; returns the next (h, x) (x (None, None) after the last
        layer, which nothing reads)."""
        att, ffn, dt = layer.attention, layer.ffn, self.dtype
        batch, width, dim = h.shape
        q8, s8 = x
        if cls_only:  # [CLS] rows only: its query, residual and everything after attention
            cls = torch.arange(batch) * width
            qq, qs, residual = q8[cls], s8[cls], h[:, 0].contiguous()
        else:
            qq, qs, residual = q8, s8, h.view(-1, dim)
        a = self._attention(att.q_lin.from_quantized(qq, qs, dt), att.k_lin.from_quantized(q8, s8, dt),
                            att.v_lin.from_quantized(q8, s8, dt), mask, lengths, batch, dim)
        aq, as_ = native.quantize(a.view(-1, dim))
        out, sa = att.out_lin, layer.sa_layer_norm
        h, hq, hs = native.product_add_norm_quantize(out.product(aq, dt), as_, out.product_col_scale, out.bias,
                                                     residual, sa.weight, sa.bias, sa.eps)
        fq, fs, fm = ffn.lin1.gelu_quantize(hq, hs, dt)
        norm = layer.output_layer_norm
        h, nq, ns = native.product_add_norm_quantize(
            ffn.lin2.product(fq, dt), fs, ffn.lin2.product_col_scale, ffn.lin2.bias, h, norm.weight, norm.bias,
            norm.eps, mid=fm, weight_sum=ffn.lin2.weight_sum, quantize_out=not last)
        return h.view(batch, -1, dim), (nq, ns)
