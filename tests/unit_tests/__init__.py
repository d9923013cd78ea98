"""Unit tier: tiny random models and the repository's own files; no real model, no real data."""
