"""The web dashboard (`reviews dashboard`): Starlette pages over the rollups of migration 0004, with
every asset shipped in the package so that it works offline.

    params.py     the query string of a page, checked: versions, date range, label, paging
    queries.py    SQL over the rollups (sentiment_daily, entity_daily) and the entity drill-down
    operations.py SQL over jobs and model versions
    highlight.py  a review's text, escaped, with the entity's mentions marked
    views.py      one function per page: the numbers and chart series a template shows
    app.py        the ASGI app: routes, templates, static files, security headers

Nothing here imports torch; the package's __init__ imports nothing (no import cycles).
"""
