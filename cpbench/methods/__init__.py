"""Prompt-learning methods: one file per method, listed explicitly in ``registry.py``."""
