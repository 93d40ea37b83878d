"""The worker side: the Celery app (`celery -A jobql.tasks worker`) and the work it does.

Nothing here imports the web side.
"""
