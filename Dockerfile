# syntax=docker/dockerfile:1
# Seedream Gateway: a builder stage fills /venv, a slim runtime stage runs it as a non-root user under tini.
#   docker build -t seedream-gateway .
#   docker run --rm -p 8000:8000 seedream-gateway        # zero-config demo (embedded PostgreSQL, built-in sandbox)
# docker-compose.yml runs it for real: PostgreSQL, Redis, a one-shot migration, the sandbox, the gateway;
# deploy/kubernetes/ runs it on a cluster (docs/kubernetes.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /venv
ENV PATH=/venv/bin:$PATH
WORKDIR /app

# Dependencies first, read from pyproject.toml alone, so that a code change does not reinstall them. The `otel`
# extra too: tracing stays off until OTEL_EXPORTER_OTLP_ENDPOINT is set (docs/observability.md).
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['otel']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Why editable: app/db/migrate.py finds alembic.ini and migrations/ at Path(app.__file__).parents[1]. A plain
# `pip install .` would copy `app` into site-packages, and that root would then be site-packages. The editable
# install writes only metadata, a finder mapping `app` -> /app/app and the `seedream-gateway` script into /venv;
# the runtime stage puts the code, alembic.ini and migrations/ at the same /app, so the root is /app.
COPY app ./app
RUN pip install --no-deps -e .


FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin gateway
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /app
COPY --from=builder /venv /venv
COPY alembic.ini ./
COPY migrations ./migrations
COPY app ./app
# Bytecode compiled now, as root: the code stays read-only for the gateway user. data/ is the only writable
# place (the zero-config run's embedded PostgreSQL and demo secrets; mount a volume there to keep them).
RUN python -m compileall -q app migrations \
    && mkdir -p /app/data \
    && chown gateway:gateway /app/data

# Numeric, so that Kubernetes' runAsNonRoot can check it without a passwd lookup (deploy/kubernetes runs it as
# 10001 with a read-only root file system: only /tmp, an emptyDir there, is writable).
USER 10001:10001
EXPOSE 8000
# The slim image has no curl: probe /healthz with the interpreter already there.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
# tini as PID 1: signals reach uvicorn (graceful shutdown on docker stop) and zombies are reaped.
# GATEWAY_WORKERS=N (or `serve --workers N`) runs N worker processes under the one `serve` process.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["seedream-gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]
