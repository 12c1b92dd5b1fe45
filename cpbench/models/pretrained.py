"""The pretrained tag a backbone gets by default. Its own module (no torch) because the CLI needs it
before any check that could fail fast."""

from __future__ import annotations


def default_pretrained(name: str) -> str:
    """The pretrained tag a backbone gets when ``--pretrained`` is not given (and that its rows
    record): the embedded toy weights, random weights for ``tiny``, OpenAI's for open_clip models."""
    return {"toy": "embedded", "tiny": "none"}.get(name, "openai")
