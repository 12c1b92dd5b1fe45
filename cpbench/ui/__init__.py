"""What the user sees of a run and of learned prompts: the live progress display (``progress.py``)
and ``cpbench predict`` (``predict.py``)."""
