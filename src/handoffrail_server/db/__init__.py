"""Database infrastructure: engine, portable column types, ORM tables, unit of work."""
