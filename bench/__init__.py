"""The HandoffRail benchmark harness (issue 10): `make bench`, `handoffrail bench`."""
