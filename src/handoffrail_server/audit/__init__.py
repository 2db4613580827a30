"""Audit trail: the recorded events of a tenant, newest first."""
