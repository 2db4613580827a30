#!/bin/sh
# HandoffRail container entrypoint (also what the native rehearsal in tests/deploy runs).
#
#   entrypoint.sh [api] [GUNICORN OPTIONS...]   migrate, then Gunicorn + Uvicorn workers (default)
#   entrypoint.sh worker [OPTIONS...]           migrate, then `handoffrail worker`
#   entrypoint.sh jobs run NAME                 any other `handoffrail` subcommand, no migration
#   entrypoint.sh /path/to/program ARGS...      any program on PATH, as given
#
# Migrations run under a PostgreSQL advisory lock (migrations/env.py), so several replicas may start
# at once. Set HR_SKIP_MIGRATIONS=1 where a separate release step migrates (Kubernetes Job, Fly
# release_command, Render preDeployCommand, Railway preDeployCommand).
# Port: HR_PORT, else the platform's PORT (Railway, Render, Cloud Run), else 8080.
set -eu

HR_PORT="${HR_PORT:-${PORT:-8080}}"
HR_BIND_HOST="${HR_BIND_HOST:-0.0.0.0}"
export HR_PORT HR_BIND_HOST

# prometheus_client writes its multiprocess files there from the first import (also in CLI runs).
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi

here="$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)"
GUNICORN_CONFIG="${GUNICORN_CONFIG:-$here/gunicorn.conf.py}"

migrate() {
    case "${HR_SKIP_MIGRATIONS:-}" in
        1 | true | TRUE | True | yes)
            echo "entrypoint: HR_SKIP_MIGRATIONS is set; not migrating" >&2
            return 0
            ;;
    esac
    echo "entrypoint: handoffrail migrate up" >&2
    handoffrail migrate up
}

if [ "$#" -eq 0 ]; then
    set -- api
fi

case "$1" in
    api)
        shift
        migrate
        exec gunicorn -c "$GUNICORN_CONFIG" "$@" handoffrail_server.asgi:app
        ;;
    worker)
        migrate
        exec handoffrail "$@"
        ;;
    -*)
        # Options only: Gunicorn options for the api.
        migrate
        exec gunicorn -c "$GUNICORN_CONFIG" "$@" handoffrail_server.asgi:app
        ;;
    *)
        # A program on PATH (not a shell builtin such as `jobs`), else a handoffrail subcommand.
        resolved="$(command -v "$1" 2>/dev/null || true)"
        case "$resolved" in
            */*) exec "$@" ;;
        esac
        exec handoffrail "$@"
        ;;
esac
