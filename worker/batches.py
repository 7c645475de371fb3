"""Analyse one batch of reviews, with every guarantee, for the Celery worker and `reviews run` alike.

One attempt reads the texts, runs both models and writes results and job progress in one transaction.
What an attempt can hit, and what happens:

- the database is unreachable: the whole batch is retried after a backoff with jitter, at most
  REVIEWS_DB_MAX_RETRIES times (then the reviews stay pending: `reviews resume` sends them again);
- the engine raises (a review it cannot handle, a GPU out of memory): the batch is retried
  REVIEWS_TASK_MAX_RETRIES times, then isolated: its reviews run one at a time, the good ones get
  results and each bad one is recorded failed with its reason;
- a model that cannot be loaded: no retry can help; the error goes up as it is.

`process` makes one attempt and says when to try again (`RetryLater`); the caller decides how to
wait: the Celery task with `self.retry(countdown=...)`, `run_to_end` with a sleep.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from . import jobs, language, logs, metrics, results
from .db import any_of, update_by_id
from .nlp.types import ModelLoadError
from .rollups import ReviewFacts, utc_day
from .schema import Review

log = logging.getLogger(__name__)

# What "the database is away" looks like through SQLAlchemy. A DBAPIError that says its connection
# was invalidated (the server closed it mid-query) belongs here too.
DB_DOWN = (OperationalError, InterfaceError)


def database_down(exc: BaseException) -> bool:
    return isinstance(exc, DB_DOWN) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


@dataclass(frozen=True)
class BatchOutcome:
    written: int  # reviews with results
    failed: int  # reviews recorded failed


class RetryLater(Exception):
    def __init__(self, delay: float, reason: str):
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


def backoff(attempt: int, base: float, cap: float = 60.0, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry `attempt` + 1: base, 2 base, 4 base, ... capped, each drawn from
    its upper half so that a fleet of workers hit by one outage does not retry in lockstep."""
    ceiling = min(cap, base * 2 ** min(attempt, 32))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def analyse(resources, job_id: int | None, review_ids: list[int]) -> int:
    """One attempt at the whole batch. Returns the number of reviews written."""
    sessions = resources.sessions
    models = resources.models()
    metrics.models_serving(sessions, models)  # a no-op unless this version pair is new to the process
    with sessions() as session:
        rows = session.execute(select(Review.id, Review.text, Review.created_at, Review.ingested_at, Review.product_id)
                               .where(any_of(session, Review.id, review_ids))).all()
    if not rows:
        return 0
    ids = [r.id for r in rows]
    texts = [r.text for r in rows]
    facts = [ReviewFacts(r.id, utc_day(r.created_at, r.ingested_at), r.product_id or "") for r in rows]
    detected = language.detect(texts)
    allowed = language.allowed(resources.settings.languages)
    skipped = {i: reason for i, lang in zip(ids, detected) if (reason := language.skip_reason(lang, allowed))}
    if skipped:
        keep = [k for k, rid in enumerate(ids) if rid not in skipped]
        ids, texts, facts = [ids[k] for k in keep], [texts[k] for k in keep], [facts[k] for k in keep]
    from .nlp.ner import predict_both  # here: importing batches must not import torch

    sentiments, entities = predict_both(models.sentiment, models.ner, texts)
    floor = resources.settings.min_entity_score
    if floor > 0:  # below the floor an entity is noise to every reader of the database: not stored
        entities = [[e for e in ents if e.score >= floor] for ents in entities]
    if not len(sentiments) == len(entities) == len(ids):  # zip() below would drop reviews, yet mark them done
        raise RuntimeError(f"the engine returned {len(sentiments)} sentiments and {len(entities)} entity lists "
                           f"for {len(ids)} reviews")
    store(sessions, job_id, {r.id: lang for r, lang in zip(rows, detected)}, facts, sentiments, entities,
          (models.sentiment_version_id, models.ner_version_id), skipped)
    resources.rollups.after_batch(sessions)
    return len(ids)


def store(sessions, job_id: int | None, languages: dict[int, str], facts: list[ReviewFacts], sentiments: list,
          entities: list, versions: tuple[int, int], skipped: dict[int, str], with_rollups: bool = True) -> None:
    """A batch's one write transaction: the reviews' languages, the results of `facts` (with their
    rollup deltas; with_rollups=False: without, bench/write_path.py's baseline), the job's review
    states (done, or skipped for `skipped`'s reasons); then the job closes if this was its last batch."""
    ids = [f.id for f in facts]
    with sessions() as session:
        update_by_id(session, Review, "language", languages)
        if ids:
            results.write(session, facts, sentiments, entities, *versions, with_rollups=with_rollups)
        if job_id is not None:
            jobs.mark_reviews(session, job_id, ids, jobs.DONE)
            for reason in set(skipped.values()):
                jobs.mark_reviews(session, job_id, [i for i, r in skipped.items() if r == reason], jobs.SKIPPED, reason)
        session.commit()
        if job_id is not None:
            jobs.finish_if_complete(session, job_id)


def isolate(resources, job_id: int | None, review_ids: list[int]) -> BatchOutcome:
    """One review at a time, so that the good ones still get results and each bad one is recorded
    failed with its reason. A database or model-loading error is not the review's fault: it goes up."""
    written = failed = 0
    for rid in review_ids:
        try:
            written += analyse(resources, job_id, [rid])
        except ModelLoadError:
            raise
        except Exception as exc:
            if database_down(exc):
                raise
            log.warning("review %s failed: %s: %s", rid, type(exc).__name__, exc)
            failed += 1
            metrics.review_failed(exc)
            if job_id is not None:
                with resources.sessions() as session:
                    jobs.mark_reviews(session, job_id, [rid], jobs.FAILED, f"{type(exc).__name__}: {exc}"[:2000])
                    session.commit()
                    jobs.finish_if_complete(session, job_id)
    return BatchOutcome(written, failed)


def process(resources, job_id: int | None, review_ids: list[int], attempt: int = 0) -> BatchOutcome:
    """Attempt number `attempt` (0 for the first) at a batch; raises RetryLater when it should be
    tried again, after `.delay` seconds."""
    s = resources.settings
    try:
        try:
            return BatchOutcome(analyse(resources, job_id, review_ids), 0)
        except ModelLoadError:
            raise
        except Exception as exc:
            if database_down(exc):
                raise
            if attempt < s.task_max_retries:
                metrics.retried("engine")
                raise RetryLater(backoff(attempt, s.retry_delay), f"{type(exc).__name__}: {exc}") from exc
            log.error("batch of %d failed %d times (%s: %s): isolating its reviews", len(review_ids), attempt + 1,
                      type(exc).__name__, exc)
            return isolate(resources, job_id, review_ids)
    except Exception as exc:
        if not database_down(exc) or attempt >= s.db_max_retries:
            raise
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        metrics.retried("database")
        raise RetryLater(backoff(attempt, s.retry_delay), f"database unavailable: {reason}") from exc


def run_to_end(resources, job_id: int | None, review_ids: list[int],
               sleep: Callable[[float], None] = time.sleep) -> BatchOutcome:
    """The in-process driver of `process` (`reviews run`, `reviews resume --local`): waits in place.
    With no Celery task id, the first review's id names the batch in log lines."""
    attempt = 0
    with logs.batch(job_id, f"r{review_ids[0]}" if review_ids else "r-"):
        while True:
            try:
                return process(resources, job_id, review_ids, attempt)
            except RetryLater as retry:
                log.warning("batch of %d: %s; retry %d in %.1f s", len(review_ids), retry.reason, attempt + 1,
                            retry.delay)
                sleep(retry.delay)
                attempt += 1
