"""Small building blocks of the hooked any-order models, one job per module."""
