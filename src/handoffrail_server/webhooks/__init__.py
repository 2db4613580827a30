"""Webhooks: endpoints, the transactional outbox, signed delivery with retries and dead-letter."""
