"""Probes: how each attention head splits its mass between semantic and structural keys."""
