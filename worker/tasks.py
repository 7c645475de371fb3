"""Thin Celery tasks: unpack arguments, call the plain functions, nothing else.

Each worker process builds its resources (sessions, models) once and hands them to every task, as
arq hands `ctx` to its jobs: `WorkerContext` holds them for the app that `create_app` built.
"""

from __future__ import annotations

import logging
import os

from celery import Celery

from . import batches
from .config import Settings

log = logging.getLogger(__name__)


class WorkerContext:
    """The per-process resources of one app. Built on first use in each process: a forked child
    (prefork pool) notices the new pid and builds its own, never sharing its parent's database
    connections, with its share of the cores (settings.threads)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._resources = None
        self._pid: int | None = None

    @property
    def resources(self):
        if self._resources is None or self._pid != os.getpid():
            from .resources import Resources  # torch and the models: only where a task runs

            self._resources = Resources(self.settings)
            self._pid = os.getpid()
        return self._resources

    def warm_up(self) -> None:
        """Load the active models now, so that a broken model stops the worker at start, not in a batch."""
        self.resources.models()

    def warm_up_quietly(self, **_) -> None:
        """For a prefork child as it starts (Celery's worker_process_init): a failure here is logged,
        and raised again by the first batch, where it is recorded; a child that died would loop."""
        try:
            self.warm_up()
        except Exception:
            log.exception("loading the models failed")


def register(app: Celery, ctx: WorkerContext) -> None:
    """Define the tasks on `app`, bound to `ctx`. shared=False: Celery would otherwise hand the first
    app's tasks, and with them its ctx, to every app made later in the process."""
    app.reviews_context = ctx  # the CLI's worker command warms it up before consuming

    @app.task(name="reviews.analyze", bind=True, max_retries=None, shared=False)
    def analyze(self, job_id: int | None, review_ids: list[int]) -> int:
        try:
            return batches.process(ctx.resources, job_id, review_ids, self.request.retries).written
        except batches.RetryLater as retry:
            log.warning("job %s: batch of %d: %s; retry %d in %.1f s", job_id, len(review_ids), retry.reason,
                        self.request.retries + 1, retry.delay)
            raise self.retry(countdown=retry.delay)

    @app.task(name="reviews.retrain", ignore_result=False, shared=False)
    def retrain(task: str, min_new_labels: int = 0, **train_options) -> dict:
        """Runs on a trainer (queue 'training'); the outcome is kept in the result backend for --wait."""
        from . import retrain as retraining

        res = ctx.resources
        return retraining.retrain(res.settings, res.sessions, task, min_new_labels, **train_options).as_dict()

    @app.task(name="reviews.distill", ignore_result=False, shared=False)
    def distill(request: dict) -> dict:
        """Runs on a trainer (queue 'training'): `reviews distill` without --local."""
        from . import distill as distillation
        from .nlp.types import ModelLoadError

        res = ctx.resources
        req = distillation.DistillRequest(**request)
        try:
            return distillation.distill(res.settings, res.sessions, req).as_dict()
        except (distillation.DistillError, ModelLoadError) as exc:  # a request that cannot run: said, not retried
            return distillation.RetrainOutcome(req.task, "failed", str(exc)).as_dict()

    @app.task(name="reviews.scheduled_retrain", shared=False)
    def scheduled_retrain() -> list[dict]:
        """The beat schedule's entry: retrain each task that has enough labels no version trained on."""
        from . import retrain as retraining

        res = ctx.resources
        return [retraining.retrain(res.settings, res.sessions, task, res.settings.retrain_min_labels).as_dict()
                for task in ("sentiment", "ner")]
