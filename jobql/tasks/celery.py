"""The worker's Celery app, configured from the environment: `celery -A jobql.tasks worker`."""

from jobql.registry import load_kinds
from jobql.settings import Settings
from jobql.tasks.worker import create_worker_app

settings = Settings()
app = create_worker_app(settings, load_kinds(settings))
