"""Training pipelines: token-level reward data, MRM with partial supervision, monitors, and the resumable loop they share."""
