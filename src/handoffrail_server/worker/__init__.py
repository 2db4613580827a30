"""Background worker: webhook delivery loop and scheduled jobs."""
