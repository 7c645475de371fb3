"""How every trained model is written: half precision safetensors with its tokenizer."""

from __future__ import annotations

from pathlib import Path

from ..nlp.loading import quiet_transformers


def save_half(model, tokenizer, out: Path) -> None:
    quiet_transformers()
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out, safe_serialization=True)
    model.float()
    tokenizer.save_pretrained(out)
