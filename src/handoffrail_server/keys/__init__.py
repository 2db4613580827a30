"""API keys: generation, hashing, lookup, create/list/revoke/rotate, bootstrap."""
