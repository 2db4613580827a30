"""The human-in-the-loop page at /dashboard: server-rendered, signed-cookie sessions, live SSE."""
