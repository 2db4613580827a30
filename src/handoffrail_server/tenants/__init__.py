"""Tenants: isolated customer accounts with a tier and quota overrides."""
