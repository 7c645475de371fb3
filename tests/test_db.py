"""db.py's dialect-specific writers: a bulk update by id is one statement on PostgreSQL and an
executemany on SQLite, and on both it changes exactly the rows and the column it names."""

import pytest
from sqlalchemy import select

from worker.db import session_factory, update_by_id
from worker.schema import Review


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_update_by_id_sets_each_row_its_own_value_and_leaves_the_rest(db, request):
    url = request.getfixturevalue("migrated_sqlite" if db == "sqlite" else "migrated_pg")
    sessions = session_factory(url)
    with sessions() as s:
        rows = [Review(external_id=f"e{i}", text=f"text {i}", text_sha256=f"{i:064d}", language="xx")
                for i in range(4)]
        s.add_all(rows)
        s.commit()
        ids = [r.id for r in rows]
        update_by_id(s, Review, "language", {ids[0]: "en", ids[1]: None, ids[3]: "o'ç"})
        s.commit()
    with sessions() as s:
        got = dict(s.execute(select(Review.id, Review.language)).all())
        texts = dict(s.execute(select(Review.id, Review.text)).all())
    assert got == {ids[0]: "en", ids[1]: None, ids[2]: "xx", ids[3]: "o'ç"}
    assert texts == {i: f"text {k}" for k, i in enumerate(ids)}  # no other column touched
    with sessions() as s:
        update_by_id(s, Review, "language", {})  # nothing to do is not an error
