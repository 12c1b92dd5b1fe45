"""Learned state in and out of cpbench.

- ``export.py``: the export file (one self-describing safetensors file of a learned prompt model),
  also the ``export:`` import backend; ``export_job.py``: ``cpbench export``, one trained job's file;
- ``imports.py``: learned state that comes from elsewhere instead of training (``KIND:PATH``);
- ``official.py`` (+ ``official_files.py``, ``official_names.py``): the authors' released
  checkpoints, the ``official:`` import backend;
- ``unpickle.py``: the one allow-list unpickler for pickled files other code wrote.
"""
