"""Real-time streams: SSE with Last-Event-ID resume and WebSocket, tenant-isolated."""
