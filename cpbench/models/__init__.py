"""Backbones: open_clip models wrapped with prompt-aware text and image encoders."""
