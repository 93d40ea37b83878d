# One image for the web server and the worker.
FROM node:20-slim AS assets
WORKDIR /build
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY scripts ./scripts
RUN mkdir -p jobql/static && node scripts/build-assets.mjs

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY jobql ./jobql
# GraphiQL's and the job page's scripts, so the pages work without a CDN.
COPY --from=assets /build/jobql/static/vendor ./jobql/static/vendor
RUN pip install --no-cache-dir -c requirements.lock . \
    && useradd --create-home --uid 10001 jobql \
    && mkdir -p /data/media && chown jobql /data/media
USER jobql
ENV JOBQL_MEDIA_ROOT=/data/media
EXPOSE 8000
CMD ["jobql", "web", "--host", "0.0.0.0", "--port", "8000"]
