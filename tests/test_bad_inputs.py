"""Bad inputs (issue 8), table-driven: each one ends with exactly one clear error line on stderr
and exit code 2 through the CLI (in-process, so the table runs in seconds), and leaves nothing
half-written: no temp files, no shards, every checkpoint index names a complete file.

Each case builds what it needs under a fresh tmp folder from a miniature prepared caltech101
(tests/minidata.py) and returns the argv; ``fault`` optionally monkeypatches a failure in (a
full disk)."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from minidata import make_caltech  # noqa: E402

RUN = ["run", "coop", "--backbone", "tiny", "--pretrained", "none", "--device", "cpu", "--shots", "2",
       "--seeds", "1", "--set", "epochs=2", "batch_size=2", "test_batch_size=4"]


def _ds(t: Path) -> Path:
    return t / "data" / "caltech-101"


def _split(t: Path) -> Path:
    return _ds(t) / "split_zhou_Caltech101.json"


def _edit_split(t: Path, fn) -> None:
    p = _split(t)
    obj = json.loads(p.read_text())
    fn(obj)
    p.write_text(json.dumps(obj))


def run_args(t: Path, *extra: str) -> list[str]:
    return [*RUN, "--root", str(t / "data"), "--results", str(t / "res"), *extra]


def _first_test_image(t: Path) -> Path:
    rel = json.loads(_split(t).read_text())["test"][0][0]
    return _ds(t) / "101_ObjectCategories" / rel


def _cfg(t: Path, data: bytes) -> str:
    p = t / "cfg.yaml"
    p.write_bytes(data)
    return str(p)


def _truncated_weights(t: Path) -> str:
    from safetensors.torch import save_file

    from cpbench.models.backbone import load_backbone

    p = t / "w.safetensors"
    save_file({k: v.contiguous() for k, v in load_backbone("tiny", "none").clip.state_dict().items()}, str(p))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return str(p)


def _foreign_weights(t: Path) -> str:
    """A state dict of another architecture: one key renamed, one reshaped."""
    from safetensors.torch import save_file

    from cpbench.models.backbone import load_backbone

    state = {k: v.contiguous() for k, v in load_backbone("tiny", "none").clip.state_dict().items()}
    state["visual.conv1.weight"] = state["visual.conv1.weight"][:, :, :4, :4].contiguous()
    state["text_proj.renamed"] = state.pop("ln_final.weight")
    p = t / "foreign.safetensors"
    save_file(state, str(p))
    return str(p)


def _one_class(o: dict) -> None:
    for part in ("train", "val", "test"):
        o[part] = [r for r in o[part] if r[1] == 0]


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


# (id, setup(t) -> argv, needle in the error line, fault(monkeypatch) or None)
CASES = [
    # ---- command line
    ("unknown-method", lambda t: ["run", "nosuchmethod", "--root", str(t / "data")], "unknown method", None),
    ("unknown-dataset", lambda t: run_args(t, "--dataset", "nosuchdata"), "unknown dataset", None),
    ("shots-zero", lambda t: [*run_args(t), "--shots", "0"], "--shots must be positive", None),
    ("shots-negative", lambda t: [*run_args(t), "--shots", "-2"], "--shots must be positive", None),
    ("seeds-not-int", lambda t: [*run_args(t), "--seeds", "one"], "--seeds", None),
    ("unknown-protocol", lambda t: run_args(t, "--protocol", "nope"), "unknown protocol", None),
    ("unknown-option", lambda t: run_args(t, "--frobnicate"), "--frobnicate", None),
    ("bad-device", lambda t: [*run_args(t), "--device", "tpu"], "--device must be", None),
    ("unknown-launcher", lambda t: run_args(t, "--launcher", "kubernetes"), "unknown launcher", None),
    ("local-without-gpus", lambda t: run_args(t, "--launcher", "local"), "--gpus", None),
    ("local-bad-gpus", lambda t: run_args(t, "--launcher", "local", "--gpus", "0,x"), "--gpus takes", None),
    ("slurm-bad-time", lambda t: run_args(t, "--launcher", "slurm", "--time", "soon"), "--time takes", None),
    ("slurm-zero-time", lambda t: run_args(t, "--launcher", "slurm", "--time", "0"), "--time must be positive", None),
    ("slurm-bad-parallelism", lambda t: run_args(t, "--launcher", "slurm", "--array-parallelism", "0"),
     "--array-parallelism", None),
    ("report-bad-format", lambda t: ["report", "--format", "pdf", "--results", str(t / "res")], "--format", None),
    ("report-no-results", lambda t: ["report", "--results", str(t / "empty")], "no results", None),
    ("prepare-unknown", lambda t: ["prepare", "nosuchdata", "--root", str(t / "data")], "unknown dataset", None),
    ("prepare-from-missing", lambda t: ["prepare", "caltech101", "--root", str(t / "fresh"), "--from",
                                        str(t / "nowhere")], "no such folder", None),
    ("nothing-prepared", lambda t: [*RUN, "--root", str(t / "empty"), "--results", str(t / "res")],
     "cpbench prepare", None),
    ("dataset-not-prepared", lambda t: [*RUN, "--dataset", "toy_shapes", "--root", str(t / "data"), "--results",
                                        str(t / "res")], "cpbench prepare", None),
    ("results-is-a-file", lambda t: ((t / "afile").write_text("x"), [*RUN, "--root", str(t / "data"), "--results",
                                     str(t / "afile")])[1], "--results", None),
    ("weights-missing", lambda t: run_args(t, "--weights", str(t / "nope.pt")), "nope.pt", None),
    # ---- issue 17
    ("weights-truncated", lambda t: run_args(t, "--weights", _truncated_weights(t)), "truncated", None),
    ("weights-other-architecture", lambda t: run_args(t, "--weights", _foreign_weights(t)),
     "visual.conv1.weight [64, 3, 4, 4] vs [64, 3, 8, 8]", None),
    ("weights-missing-keys-named", lambda t: run_args(t, "--weights", _foreign_weights(t)),
     "missing key(s) (ln_final.weight)", None),
    ("results-under-a-file", lambda t: ((t / "afile").write_text("x"), [*RUN, "--root", str(t / "data"), "--results",
                                        str(t / "afile" / "x")])[1], "is a file", None),
    ("seeds-negative", lambda t: [*run_args(t), "--seeds", "-1"], "--seeds must be >= 0", None),
    ("shots-more-than-a-class-has", lambda t: [x if x != "2" else "1000" for x in run_args(t)],
     "use --shots 4 or fewer", None),
    ("one-class-dataset", lambda t: (_edit_split(t, _one_class), run_args(t))[1], "at least 2", None),
    ("gpus-that-do-not-exist", lambda t: run_args(t, "--launcher", "local", "--gpus", "0,99"), "99, but this machine has", None),
    ("threads-not-a-number", lambda t: run_args(t, "--threads", "0"), "--threads", None),
    ("threads-env-bad", lambda t: (__import__("os").environ.__setitem__("CPBENCH_THREADS", "lots"), run_args(t))[1],
     "$CPBENCH_THREADS", None),
    ("local-launcher-bad-weights-once", lambda t: run_args(t, "--launcher", "local", "--gpus", "cpu,cpu", "--weights",
                                                          _foreign_weights(t)), "does not fit", None),
    ("report-curves-a-file", lambda t: ((t / "afile").write_text("x"), ["report", "--results", str(t / "res"),
                                        "--curves", str(t / "afile")])[1], "--curves", None),
    # ---- --set and YAML configs
    ("set-not-a-number", lambda t: run_args(t, "--set", "epochs=many"), "epochs", None),
    ("set-unknown-key", lambda t: run_args(t, "--set", "warp_speed=9"), "warp_speed", None),
    ("set-malformed", lambda t: run_args(t, "--set", "epochs"), "--set key=value", None),
    ("set-negative-epochs", lambda t: run_args(t, "--set", "epochs=-1"), "epochs must be >= 0", None),
    ("set-bad-precision", lambda t: run_args(t, "--set", "precision=fp8"), "precision must be", None),
    ("config-missing", lambda t: run_args(t, "--config", str(t / "none.yaml")), "none.yaml", None),
    ("config-bad-yaml", lambda t: run_args(t, "--config", _cfg(t, b"train: {epochs: [1,\n")), "not valid YAML", None),
    ("config-a-list", lambda t: run_args(t, "--config", _cfg(t, b"- 1\n- 2\n")), "must be a mapping", None),
    ("config-unknown-section", lambda t: run_args(t, "--config", _cfg(t, b"trian:\n  epochs: 1\n")),
     "unknown section", None),
    ("config-not-utf8", lambda t: run_args(t, "--config", _cfg(t, b"train:\n  epochs: \xff\xfe1\n")), "cfg.yaml", None),
    ("config-bad-value", lambda t: run_args(t, "--config", _cfg(t, b"train:\n  lr: -1\n")), "lr must be", None),
    ("config-block-without-train", lambda t: run_args(t, "--config", _cfg(t, b"protocols:\n  base2new:\n    epochs: 1\n")),
     "protocols.base2new: unknown section(s) epochs", None),
    # ---- split files
    ("split-not-json", lambda t: (_split(t).write_text("{not json"), run_args(t))[1], "split", None),
    ("split-not-utf8", lambda t: (_split(t).write_bytes(b'{"train": [["\xff\xfe.jpg", 0, "a"]]}'), run_args(t))[1],
     "split", None),
    ("split-no-test", lambda t: (_edit_split(t, lambda o: o.pop("test")), run_args(t))[1], "split", None),
    ("split-bad-entry", lambda t: (_edit_split(t, lambda o: o["train"].append(["x.jpg", 0])), run_args(t))[1],
     "split", None),
    ("split-bad-label-type", lambda t: (_edit_split(t, lambda o: o["train"].append(["x.jpg", "zero", "a"])),
                                        run_args(t))[1], "split", None),
    ("split-missing", lambda t: (_split(t).unlink(), run_args(t))[1], "cpbench prepare", None),
    ("split-empty-train", lambda t: (_edit_split(t, lambda o: o.update(train=[])), run_args(t))[1], "train", None),
    ("split-test-class-not-in-train", lambda t: (_edit_split(t, lambda o: o["test"].append(
        ["ant/image_0005.jpg", 9, "zebra"])), run_args(t))[1], "zebra", None),
    ("split-label-name-mismatch", lambda t: (_edit_split(t, lambda o: o["train"].__setitem__(
        0, [o["train"][0][0], 0, "not-accordion"])), run_args(t))[1], "not-accordion", None),
    ("split-non-utf8-path", lambda t: (_edit_split(t, lambda o: o["test"].__setitem__(
        0, ["accordion/\udcff.jpg", 0, "accordion"])), run_args(t))[1], "missing", None),
    ("split-non-utf8-classname", lambda t: (_edit_split(t, lambda o: [r.__setitem__(2, "acc\udcffordion")
                                            for p in ("train", "val", "test") for r in o[p] if r[1] == 0]),
                                            run_args(t))[1], "not valid UTF-8", None),
    # ---- images
    ("image-truncated", lambda t: (_first_test_image(t).write_bytes(_first_test_image(t).read_bytes()[:40]),
                                   run_args(t))[1], "unreadable", None),
    ("image-not-an-image", lambda t: (_first_test_image(t).write_text("hello"), run_args(t))[1], "unreadable", None),
    ("image-missing", lambda t: (_first_test_image(t).unlink(), run_args(t))[1], "missing", None),
    ("image-empty", lambda t: (_first_test_image(t).write_bytes(b""), run_args(t))[1], "unreadable", None),
    # ---- full disk
    ("disk-full-shard", lambda t: run_args(t), "no space left",
     lambda mp: mp.setattr("pyarrow.parquet.write_table", _enospc)),
    ("disk-full-checkpoint", lambda t: run_args(t), "no space left",
     lambda mp: mp.setattr("cpbench.engine.checkpoint.save_file", _enospc)),
]


def _leftovers(t: Path) -> list[str]:
    from cpbench.engine import checkpoint

    bad = [str(p) for p in t.rglob("*.tmp")]
    for shard in t.rglob("shards/*.parquet"):
        bad.append(f"shard written: {shard}")
    for idx in t.rglob("checkpoints/*/*.json"):
        if checkpoint.read_meta(idx.parent, idx.stem) is None:
            bad.append(f"checkpoint index without its file: {idx}")
    return bad


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    make_caltech(root / "data")
    return root / "data"


def test_table_has_enough_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2(case, pristine, tmp_path, monkeypatch, capsys):
    import shutil

    from cpbench.cli import main

    _, setup, needle, fault = case
    shutil.copytree(pristine, tmp_path / "data")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("CPBENCH_THREADS", "auto")  # restored after the test even when a case overwrites it
    argv = setup(tmp_path)
    if fault:
        fault(monkeypatch)
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setattr(sys, "argv", ["cpbench", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    full = capsys.readouterr().err
    lines = [ln for ln in full.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert exc.value.code == 2, full
    # progress lines may precede it; the error itself is one line, the last one, no traceback
    assert len(errors) == 1 and lines[-1] == errors[0], full
    err = errors[0]
    assert needle.lower() in err.lower(), err
    assert "Traceback" not in full
    assert _leftovers(tmp_path) == []
