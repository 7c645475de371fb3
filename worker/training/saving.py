"""How every trained model is written: half precision safetensors with its tokenizer."""

from __future__ import annotations

from pathlib import Path


def save_half(model, tokenizer, out: Path) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a retrain's or distillation's log is no place for shard progress bars
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out, safe_serialization=True)
    model.float()
    tokenizer.save_pretrained(out)
