"""Tiers, quotas and rate limits."""
