"""cpbench: reproducible, fast CLIP prompt-learning benchmarks (prepare -> run -> report).

``cpbench.load(path)`` opens an export file (``cpbench export``) as a classifier (cpbench/api.py);
it is imported on first use, so ``import cpbench`` stays cheap (no torch).
"""

__version__ = "0.1.0"
__all__ = ["load", "PromptClassifier", "__version__"]


def __getattr__(name: str):
    if name in ("load", "PromptClassifier"):
        from cpbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'cpbench' has no attribute {name!r}")
