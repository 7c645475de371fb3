"""Load a model and its tokenizer from a local directory or a Hugging Face model id."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from . import distilbert
from .device import pick_device, pick_precision
from .types import ModelLoadError

log = logging.getLogger(__name__)

HEADS = {"sentiment": "AutoModelForSequenceClassification", "ner": "AutoModelForTokenClassification"}


def load(source: str, task: str, device: str = "auto", precision: str = "auto", use_transformers: bool = False):
    """Return (float32 model on the CPU, tokenizer, torch device, precision name); batching.Forward
    moves the model to the device and sets its precision.

    A DistilBERT directory (ours, or one transformers saved) loads without transformers
    (distilbert.py: seconds less start-up); anything else, or `use_transformers`, through
    transformers' from_pretrained, whose model also runs transformers' own forward (the benchmarks'
    reference).

    precision "auto" on CPU is measured on the loaded model (precision.choose: the fastest of fp32,
    bf16 and int8 that agrees with fp32, cached under REVIEWS_HOME); on CUDA it is bf16 or fp16.

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
    dev = pick_device(device)
    prec = pick_precision(precision, dev, task)
    if looks_local and not use_transformers and distilbert.can_load(path, task):
        try:
            model, tokenizer = distilbert.load_model(path, task), distilbert.Tokenizer(path)
        except Exception as exc:  # safetensors, tokenizers and json each raise their own kinds
            raise _load_error(task, source, exc) from exc
        return _finish(model, tokenizer, dev, prec, precision, task, source)
    import transformers  # here, not at the top: importing it takes seconds that the CLI need not pay

    quiet_transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name, use_fast=True)
        # Loaded in float32 (half-precision files are upcast); batching.Forward then decides which
        # weights run in which precision.
        # transformers picks torch's fused attention (SDPA) where the architecture has it and its own
        # where not (MPNet): asking for SDPA by name made such models fail to load.
        model = getattr(transformers, HEADS[task]).from_pretrained(name, use_safetensors=True, dtype=torch.float32)
    except Exception as exc:  # transformers raises OSError, ValueError, EnvironmentError... depending on the fault
        raise _load_error(task, source, exc) from exc
    if not tokenizer.is_fast:
        raise ModelLoadError(f"{task} model {source!r}: needs a fast tokenizer (tokenizer.json) for offsets")
    model.eval()
    return _finish(model, tokenizer, dev, prec, precision, task, source)


def quiet_transformers() -> None:
    """No weight-loading or shard-writing progress bars: worker, retrain, distillation and build logs
    are read line by line, and the bars are noise there."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _load_error(task: str, source: str, exc: Exception) -> ModelLoadError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(f"cannot load {task} model {source!r}: {reason}")


def _finish(model, tokenizer, dev, prec: str, precision: str, task: str, source: str):
    if precision == "auto" and dev.type == "cpu":
        from . import precision as precision_choice

        prec = precision_choice.choose(model, tokenizer, dev, task)
    log.info("loaded %s model %s on %s (%s)", task, source, dev, prec)
    return model, tokenizer, dev, prec
