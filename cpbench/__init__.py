"""cpbench: reproducible, fast CLIP prompt-learning benchmarks (prepare -> run -> report)."""

__version__ = "0.1.0"
