"""Logging, request ids and request guards shared by every feature."""
