"""For the resume tests: make a training die right after one of its epoch checkpoints was written."""

from __future__ import annotations


class Crash(Exception):
    pass


def crash_after_epoch(monkeypatch, n: int) -> None:
    """Make training raise ``Crash`` right after epoch ``n``'s checkpoint was written."""
    import cpbench.engine.train as tr

    real = tr.checkpoint.save

    def save(ckpt_dir, tag, tensors, meta):
        real(ckpt_dir, tag, tensors, meta)
        if tag == "epoch" and meta["epoch"] == n:
            raise Crash()

    monkeypatch.setattr(tr.checkpoint, "save", save)
