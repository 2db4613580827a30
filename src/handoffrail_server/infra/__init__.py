"""Shared infrastructure clients (Redis)."""
