# One image for the web server and the worker.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY jobql ./jobql
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 jobql \
    && mkdir -p /data/media && chown jobql /data/media
USER jobql
ENV JOBQL_MEDIA_ROOT=/data/media
EXPOSE 8000
CMD ["jobql", "web", "--host", "0.0.0.0", "--port", "8000"]
