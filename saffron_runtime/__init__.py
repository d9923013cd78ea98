"""Saffron runtime."""
