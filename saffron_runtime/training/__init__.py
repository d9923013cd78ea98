"""Training pipelines: token-level reward data, MRM with partial supervision, monitors (C1)."""
