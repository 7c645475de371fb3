"""Per-process resources of a worker (arq's `ctx`): the database sessions and the loaded models,
built once in each process and handed to every batch.

Models load once and stay loaded; before each batch one small query asks which versions are active,
so a promotion reaches running workers without a restart.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from . import memory, registry, rollups
from .config import Settings
from .db import session_factory
from .nlp.ner import NerModel, load_ner
from .nlp.sentiment import SentimentModel, load_sentiment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModels:
    sentiment: SentimentModel
    sentiment_version_id: int
    ner: NerModel
    ner_version_id: int


class Resources:
    def __init__(self, settings: Settings):
        import torch

        self.settings = settings
        memory.keep_freed_memory()  # before the models' first allocations
        self.sessions = session_factory(settings.database_url)
        self.rollups = rollups.Folder(settings.rollup_fold_seconds)
        self._loaded: dict[int, SentimentModel | NerModel] = {}  # model_versions.id -> model
        # On the threads pool, batches running at once share the models: one loads a new version.
        self._loading = threading.Lock()
        if settings.threads > 0:
            torch.set_num_threads(settings.threads)
            # The tokenizer's thread pool too (read when it first starts): workers sharing a host
            # each with a pool of every core would oversubscribe it.
            os.environ.setdefault("RAYON_NUM_THREADS", str(settings.threads))
        log.info("worker process %d: %d torch threads, tokenizer threads %s", os.getpid(), torch.get_num_threads(),
                 os.environ.get("RAYON_NUM_THREADS", "all cores"))

    def _load(self, version) -> SentimentModel | NerModel:
        with self._loading:
            return self._load_locked(version)

    def _load_locked(self, version) -> SentimentModel | NerModel:
        if version.id not in self._loaded:
            loader = load_sentiment if version.task == "sentiment" else load_ner
            log.info("loading %s model version %s from %s", version.task, version.version, version.source)
            model = loader(version.source, self.settings.engine_options())
            # Keep only what is active: an old version's weights are memory we no longer need.
            self._loaded = {k: v for k, v in self._loaded.items() if type(v) is not type(model)}
            self._loaded[version.id] = model
        return self._loaded[version.id]

    def models(self) -> LoadedModels:
        with self.sessions() as session:
            active = registry.active_versions(session, self.settings)
        sentiment, ner = active["sentiment"], active["ner"]
        return LoadedModels(self._load(sentiment), sentiment.id, self._load(ner), ner.id)  # type: ignore[arg-type]
