"""Everything a worker process runs: settings, database, ingest, jobs, batches, results, the Celery app, models."""
