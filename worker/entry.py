"""For Celery's own command line, which needs an app at import: `celery -A worker.entry inspect ping`,
`celery -A worker.entry flower`. The app is built from the REVIEWS_* environment, as `reviews worker`
builds it. The project's own code never imports this module."""

from .app import create_app
from .config import Settings

app = create_app(Settings.from_env())
