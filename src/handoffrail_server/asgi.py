"""ASGI entry point for Uvicorn/Gunicorn: `handoffrail_server.asgi:app` (settings from env)."""

from handoffrail_server.main import create_app

app = create_app()
