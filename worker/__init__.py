"""Everything a worker process runs: settings, database, pipeline, Celery app, models."""
