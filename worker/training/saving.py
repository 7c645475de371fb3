"""How every trained model is written: half precision safetensors with its tokenizer."""

from __future__ import annotations

from pathlib import Path


def quiet_transformers() -> None:
    """No weight-loading or shard-writing progress bars: a retrain's, distillation's or build's log is
    read line by line, and the bars are noise there."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def save_half(model, tokenizer, out: Path) -> None:
    quiet_transformers()
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out, safe_serialization=True)
    model.float()
    tokenizer.save_pretrained(out)
