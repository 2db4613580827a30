"""HandoffRail server: session-continuity middleware for multi-agent AI workflows."""

__version__ = "0.1.0"
