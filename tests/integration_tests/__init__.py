"""Integration tier: the real SmolLM2 and MiniLM, the vendored safety data, the examples and the wheel."""
