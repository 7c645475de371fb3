"""Bring your own model: `reviews models add TASK SOURCE` checks a local directory or a hub id and
registers a copy of it as a new version of TASK.

Order of work: fetch the files into a staging directory beside the versions (same filesystem, so
the final move is a rename), check them, map their labels, run them through the real engine, and only
then claim a version number (registry.claim) and move the directory to REVIEWS_MODEL_DIR/<task>/<v>/.
Nothing reaches the database unless every check passed, and a failure leaves no files behind.

Serving reads the copy, never the source: a moved directory or a force-pushed hub branch cannot
change what a version is. The hub revision is resolved to its commit and pinned; the provenance
(`org/name@commit` or the source directory) and the model's own labels are kept in
metrics["import"], and a `reviews_import.json` beside the weights says the same.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sqlalchemy.orm import Session, sessionmaker

from . import registry
from .config import Settings
from .nlp.labels import LabelError, Mapping, map_labels
from .nlp.types import NER_TYPES, SENTIMENT_LABELS, ModelLoadError

# What a model needs and nothing that can run code: weights (safetensors), config and tokenizer files
# (json, vocab/merges txt, sentencepiece .model, from which transformers builds a fast tokenizer).
ALLOW = ["*.safetensors", "*.json", "*.txt", "*.model"]
PICKLE = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
HEADS = {"sentiment": "ForSequenceClassification", "ner": "ForTokenClassification"}
# Sentences the new version must read sanely before it is registered; the first two also tell a
# swapped mapping, the third has a name of each kind the NER model should find.
CHECK_TEXTS = [
    "I loved this film: the acting was great and the story moving. A wonderful movie.",
    "A boring, terrible movie. The plot made no sense and I hated the ending.",
    "John Smith flew from Paris to London to meet the directors of Warner Bros. at the Oscars.",
]


class ModelImportError(ModelLoadError):
    """A model that cannot be added; one line that says which and why (the CLI prints it as is)."""


@dataclass
class Imported:
    task: str
    version: int
    status: str  # candidate | active
    directory: str  # the copy that serving loads
    origin: str  # org/name@commit or the source directory
    mapping: Mapping
    warnings: list[str] = field(default_factory=list)


def is_local(source: str) -> bool:
    """The rule of nlp/loading.py: what exists on disk or starts like a path is local, else a hub id."""
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~"))


def import_model(settings: Settings, sessions: sessionmaker[Session], task: str, source: str,
                 revision: str | None = None, label_map: dict[str, str] | None = None, activate: bool = False,
                 progress: Callable[[str], None] = lambda _: None) -> Imported:
    root = Path(settings.model_dir) / task
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide the version from workers of another user
    try:
        if is_local(source):
            if revision:
                raise ModelImportError(f"--revision is for hub ids; {source} is a local directory")
            origin = copy_local(Path(source).expanduser(), staging, task)
        else:
            origin = download(source, revision, staging, progress)
        progress(f"{task}: checking {origin}")
        try:
            check_head(task, staging)
            mapping = relabel(task, staging, label_map or {})
            warnings = mapping.warnings + check_engine(task, staging, settings)
        except ModelLoadError as exc:  # name the source, not the staging directory the files sit in
            raise ModelImportError(str(exc).replace(repr(str(staging)), origin).replace(str(staging), origin)) \
                from exc
        meta = {"from": origin, "revision": origin.rpartition("@")[2] if "@" in origin else None,
                "requested_revision": revision, "labels": {"original": mapping.original, "mapped": mapping.names,
                                                           "how": mapping.how}, "warnings": warnings}
        (staging / "reviews_import.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return _register(settings, sessions, task, staging, activate, meta, mapping)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already where it became a version


def copy_local(path: Path, staging: Path, task: str) -> str:
    if not path.is_dir():
        raise ModelImportError(f"{task} model {path}: not a directory")
    if not (path / "config.json").is_file():
        raise ModelImportError(f"{task} model {path}: no config.json in the directory; is it a saved model?")
    files = sorted(f for f in path.iterdir() if f.is_file())
    refuse_pickle([f.name for f in files], str(path))
    for f in files:
        if any(fnmatch.fnmatch(f.name, p) for p in ALLOW):
            shutil.copyfile(f, staging / f.name)  # follows symlinks: a hub cache snapshot copies its blobs
    return str(path.resolve())


def refuse_pickle(names: list[str], where: str) -> None:
    if any(n.endswith(".safetensors") for n in names):
        return
    pickles = [n for n in names if n.endswith(PICKLE)]
    if pickles:
        raise ModelImportError(
            f"{where} has only pickle weights ({', '.join(pickles)}), refused: loading a pickle can run code. "
            "Convert it where you trust it: model.save_pretrained(DIR, safe_serialization=True)")
    raise ModelImportError(f"{where} has no weights (*.safetensors)")


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def download(repo: str, revision: str | None, staging: Path, progress: Callable[[str], None]) -> str:
    """Download `repo` at `revision` (resolved to its commit first, so that what is downloaded and
    recorded is one commit even if the branch moves meanwhile) into staging; return `repo@commit`."""
    wanted = f"{repo}@{revision or 'main'}"
    hint = ("; where the hub cannot be reached, download the model elsewhere and add its directory "
            "(`reviews models add TASK DIR`)")
    if _offline():
        raise ModelImportError(f"cannot download hub model {wanted}: HF_HUB_OFFLINE is set{hint}")
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi().model_info(repo, revision=revision, timeout=30)
        refuse_pickle([s.rfilename for s in info.siblings or []], f"hub model {wanted}")
        progress(f"downloading {repo}@{info.sha}")
        snapshot_download(repo, revision=info.sha, local_dir=staging, allow_patterns=ALLOW)
    except ModelImportError:
        raise
    except Exception as exc:  # network, 404, auth, bad id: huggingface_hub and httpx raise many kinds
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelImportError(f"cannot download hub model {wanted}: {reason}{hint}") from exc
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping, not the model
    return f"{repo}@{info.sha}"


def _config(staging: Path) -> dict:
    try:
        return json.loads((staging / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelImportError(f"config.json cannot be read: {exc}") from exc


def check_head(task: str, staging: Path) -> None:
    """The weights hold the task's head: a base encoder or another task's head would otherwise load
    with a random head and serve noise."""
    archs = _config(staging).get("architectures") or []
    if archs and not any(a.endswith(HEADS[task]) for a in archs):
        raise ModelImportError(f"the model is a {', '.join(archs)}; a {task} model must be a *{HEADS[task]}")
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report would repeat what the error below says
    hf_logging.disable_progress_bar()
    try:
        head = getattr(transformers, f"AutoModel{HEADS[task]}")
        _, info = head.from_pretrained(staging, use_safetensors=True, dtype=torch.float32, output_loading_info=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelImportError(f"cannot load the {task} model: {reason}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(k for k in info["missing_keys"] if not k.endswith("position_ids"))
    if missing:
        raise ModelImportError(f"the checkpoint lacks weights of the {task} model ({', '.join(missing[:4])}"
                               f"{', ...' if len(missing) > 4 else ''}): they would be random")


def relabel(task: str, staging: Path, label_map: dict[str, str]) -> Mapping:
    """Map the model's labels to ours and write our names into the copy's config.json: the engine
    reads id2label, so a mapped version needs nothing else at load time."""
    config = _config(staging)
    raw = config.get("id2label") or {str(i): f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))}
    try:
        original = [str(raw[str(i)]) for i in range(len(raw))]
    except KeyError:
        raise ModelImportError(f"config.json id2label is not numbered 0..{len(raw) - 1}: {raw}") from None
    try:
        mapping = map_labels(task, original, label_map)
    except LabelError as exc:
        raise ModelImportError(str(exc)) from None
    config["id2label"] = {str(i): name for i, name in enumerate(mapping.names)}
    # label2id cannot hold a name twice (two classes merged): the first class of a name stands for it.
    config["label2id"] = {name: i for i, name in reversed(list(enumerate(mapping.names)))}
    (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return mapping


def check_engine(task: str, staging: Path, settings: Settings) -> list[str]:
    """Run CHECK_TEXTS through the engine serving would build (tokenizer, options, precision, label
    mapping); fail on output that breaks what results promise, warn on output that looks wrong."""
    from .nlp.ner import load_ner
    from .nlp.sentiment import load_sentiment

    engine = (load_sentiment if task == "sentiment" else load_ner)(str(staging), settings.engine_options())
    try:
        out = engine.predict(CHECK_TEXTS)
    except Exception as exc:
        raise ModelImportError(f"the {task} model fails on sample sentences: {exc}") from exc
    if len(out) != len(CHECK_TEXTS):
        raise ModelImportError(f"the {task} model gave {len(out)} results for {len(CHECK_TEXTS)} sentences")
    return _check_sentiment(out) if task == "sentiment" else _check_ner(out)


def _check_sentiment(out) -> list[str]:
    for s in out:
        ok = s.label in SENTIMENT_LABELS and math.isfinite(s.probability) and math.isfinite(s.score)
        if not ok or not 0.5 - 1e-4 <= s.probability <= 1 + 1e-4 or not -1 - 1e-4 <= s.score <= 1 + 1e-4:
            raise ModelImportError(f"the sentiment model gives a broken result on a sample sentence: {s}")
    if out[0].label == "negative" and out[1].label == "positive":
        return ["it calls a plainly positive sentence negative and a negative one positive: is the label "
                "mapping swapped? (check with `reviews evaluate sentiment`)"]
    return []


def _check_ner(out) -> list[str]:
    for text, entities in zip(CHECK_TEXTS, out):
        for e in entities:
            if (e.label not in NER_TYPES or not 0 <= e.start < e.end <= len(text) or text[e.start:e.end] != e.text
                    or not math.isfinite(e.score)):
                raise ModelImportError(f"the NER model gives a broken entity on a sample sentence: {e}")
    if not any(out):
        return ["it finds no entity in sentences with names of people, places and companies "
                "(check with `reviews evaluate ner`)"]
    return []


def _register(settings, sessions, task, staging: Path, activate: bool, meta: dict, mapping: Mapping) -> Imported:
    changed = ", ".join(f"{o}->{n}" for o, n in zip(mapping.original, mapping.names) if o != n)
    note = f"imported from {meta['from']}" + (f"; labels {changed}" if changed else "")
    with sessions() as s:
        registry.active_versions(s, settings)  # the configured model is version 1, never an import
        s.commit()
        mv = registry.claim(s, task, source="", status="candidate", metrics={"import": meta}, note=note)
        final = staging.parent / str(mv.version)
        try:
            if final.exists():
                shutil.rmtree(final)  # left by a run that died before committing: the claim makes it ours
            staging.rename(final)
            mv.source = str(final)
            if activate:
                registry.promote(s, task, mv.version, note=note + "; activated on import")
            s.commit()
        except BaseException:
            s.rollback()
            shutil.rmtree(final, ignore_errors=True)
            raise
        return Imported(task, mv.version, mv.status, str(final), meta["from"], mapping, meta["warnings"])

