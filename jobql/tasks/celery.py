"""The worker's Celery app, configured from the environment: `celery -A jobql.tasks worker`."""

from jobql.settings import Settings
from jobql.tasks.worker import create_worker_app

app = create_worker_app(Settings())
