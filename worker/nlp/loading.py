"""Load a model and its tokenizer from a local directory or a Hugging Face model id."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from .device import pick_device, pick_precision
from .types import ModelLoadError

log = logging.getLogger(__name__)

HEADS = {
    "sentiment": AutoModelForSequenceClassification,
    "ner": AutoModelForTokenClassification,
}


def load(source: str, task: str, device: str = "auto", precision: str = "auto"):
    """Return (model, tokenizer, torch device, precision name) ready for inference.

    Weights are read from safetensors only: a pickle checkpoint can run code when loaded.
    """
    path = Path(source).expanduser()
    # A hub id looks like "org/name"; anything that exists on disk or starts like a path is local.
    looks_local = path.exists() or source.startswith((".", "/", "~"))
    if looks_local and not path.is_dir():
        raise ModelLoadError(f"{task} model {source!r}: no such directory")
    if looks_local and not (path / "config.json").is_file():
        raise ModelLoadError(f"{task} model {source!r}: no config.json in the directory; is it a saved model?")
    name = str(path) if looks_local else source
    hf_logging.disable_progress_bar()  # a worker log is no place for weight-loading progress bars
    dev = pick_device(device)
    prec = pick_precision(precision, dev)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, use_fast=True)
        # fp16 files are upcast: CPU kernels are fastest and most accurate with fp32 weights under autocast.
        dtype = torch.float32 if dev.type == "cpu" or prec == "fp32" else None
        model = HEADS[task].from_pretrained(name, use_safetensors=True, dtype=dtype, attn_implementation="sdpa")
    except Exception as exc:  # transformers raises OSError, ValueError, EnvironmentError... depending on the fault
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load {task} model {source!r}: {reason}") from exc
    if not tokenizer.is_fast:
        raise ModelLoadError(f"{task} model {source!r}: needs a fast tokenizer (tokenizer.json) for offsets")
    if dev.type == "cuda" and prec != "fp32":
        model = model.to(dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[prec])
    model.to(dev).eval()
    log.info("loaded %s model %s on %s (%s)", task, source, dev, prec)
    return model, tokenizer, dev, prec
