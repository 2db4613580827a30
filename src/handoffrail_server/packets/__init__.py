"""Packets: the handoff itself, its lifecycle, claims, search and history."""
