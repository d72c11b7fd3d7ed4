# dbapi API image: gunicorn as the child of tini (PID 1), as a non-root user, logging to stdout.
# Build: docker build -t dbapi:<version> .   Run: see docker-compose.yml and docs/deployment.md.

FROM python:3.11.13-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY requirements.txt constraints.txt /tmp/
# pgserver (the embedded PostgreSQL of local runs and tests) stays out: production has a real database.
RUN python -m venv /opt/venv \
    && grep -v '^pgserver' /tmp/requirements.txt > /tmp/requirements-image.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements-image.txt -c /tmp/constraints.txt

FROM python:3.11.13-slim-bookworm
# tini forwards SIGTERM to gunicorn, which finishes requests in flight (graceful_timeout) before exiting.
# WORKER_CLASS=gevent is settings.py's default too, spelled out: a request waiting on PostgreSQL holds a greenlet.
# /var/log/dbapi is for LOG_PATH: a volume mounted there starts out owned by the service user.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 dbapi \
    && useradd --system --uid 10001 --gid dbapi --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin dbapi \
    && install -d -o dbapi -g dbapi /var/log/dbapi
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Owned by root and read-only to the service user: the app cannot change its own code.
COPY . .
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENVIRONMENT=production \
    PORT=8000 \
    WORKER_CLASS=gevent \
    BIND=0.0.0.0:8000
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 CMD ["python", "-m", "ops.healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
