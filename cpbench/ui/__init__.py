"""What the user sees of a run and of learned prompts: the live progress display (``progress.py``),
the CLI's consoles (``consoles.py``: piped output is never wrapped) and ``cpbench predict``
(``predict.py``)."""
