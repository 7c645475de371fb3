"""Alembic migrations; `reviews db upgrade` applies them (see worker/migrate.py)."""
