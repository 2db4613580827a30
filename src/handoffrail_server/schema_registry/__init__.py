"""Schema registry: tenants register JSON Schemas that packet contexts are validated against."""
