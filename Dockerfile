# syntax=docker/dockerfile:1
# HandoffRail server image: a locked virtualenv built in one stage, copied into a slim runtime.
#   docker build -t handoffrail-server .
#   docker run -e HR_DATABASE_URL=... -p 8080:8080 handoffrail-server          # api (default)
#   docker run ... handoffrail-server worker                                    # background worker
#   docker run ... handoffrail-server jobs run expire-packets                   # one scheduled job
# Proven without a Docker engine by tests/deploy (hadolint + a structure test).

FROM python:3.11-slim-bookworm AS builder

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The same uv version the Makefile bootstraps; every wheel is prebuilt (no compiler needed).
RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /src
# Dependencies first (cached layer): exactly what uv.lock says, no dev group.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
# Then the project itself, installed as a wheel (migrations are bundled inside it).
COPY src ./src
COPY migrations ./migrations
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim-bookworm AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HR_HOST=0.0.0.0 \
    HR_BIND_HOST=0.0.0.0 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/handoffrail-metrics

# A fixed numeric user so Kubernetes' runAsNonRoot can verify it; /data is for SQLite (development).
RUN groupadd --system --gid 10001 handoffrail \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin handoffrail \
    && mkdir -p /data \
    && chown 10001:10001 /data

WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY deploy/entrypoint.sh deploy/gunicorn.conf.py deploy/healthcheck.py /app/deploy/

USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["api"]
