"""Gunicorn settings for production: Uvicorn workers, graceful shutdown, multiprocess metrics.

Run: gunicorn -c deploy/gunicorn.conf.py handoffrail_server.asgi:app
Every value can be overridden from the environment (WEB_CONCURRENCY, HR_PORT, ...).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from handoffrail_server.settings import environment_name

# Uvicorn's own gunicorn worker is deprecated; the uvicorn-worker package is its successor. Ours
# is that worker with a response's head and body written in one system call (infra/serving.py).
worker_class = "handoffrail_server.infra.serving.UvicornWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
bind = [f"{os.environ.get('HR_BIND_HOST', '0.0.0.0')}:{os.environ.get('HR_PORT', '8080')}"]  # noqa: S104
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "10000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "1000"))
# Trust X-Forwarded-* only from the proxy in front (Caddy); "*" only inside a private network.
forwarded_allow_ips = os.environ.get("HR_FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = None  # the app writes one structured access event per request
errorlog = "-"
loglevel = os.environ.get("HR_LOG_LEVEL", "info")
# Gunicorn's own lines, and Uvicorn's in the workers (which write through Gunicorn's error log),
# take the app's shape and redaction: JSON outside development, one line each, on stderr.
_json_logs = environment_name(os.environ.get("HR_ENVIRONMENT", "development")) != "development"
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "handoffrail": {
            "()": "handoffrail_server.observability.logging.stdlib_formatter",
            "json_logs": _json_logs,
        }
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "handoffrail",
            "stream": "ext://sys.stderr",
        }
    },
    # the app adds its own root handler in each worker; none here, or library lines would
    # be written twice
    "root": {"level": "WARNING", "handlers": []},
    "loggers": {
        "gunicorn.error": {
            "level": loglevel.upper(),
            "handlers": ["stderr"],
            "propagate": False,
            "qualname": "gunicorn.error",
        },
        # Uvicorn's per-request lines duplicate the app's access event: kept off
        "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
    },
}
# Gunicorn 27 opens a control socket under $HOME by default; a read-only container has none.
control_socket_disable = True
worker_tmp_dir = "/dev/shm" if Path("/dev/shm").is_dir() else None  # noqa: S108

_multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if not _multiproc_dir:
    _multiproc_dir = tempfile.mkdtemp(prefix="handoffrail-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _multiproc_dir
raw_env = [f"PROMETHEUS_MULTIPROC_DIR={_multiproc_dir}"]


def on_starting(_server: Any) -> None:
    """Start with an empty metrics directory (stale files would double-count)."""
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)


def child_exit(_server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges so they stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
