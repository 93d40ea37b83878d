"""jobql: slow work behind a GraphQL API, done by Celery workers."""
