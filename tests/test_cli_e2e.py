"""Issue 2 acceptance through the real CLI: Caltech101 from ../shared, zero-shot and CoOp
base-to-new on two seeds with a small backbone, the report, and bad inputs."""

from __future__ import annotations

import json

import pandas as pd
import pytest



def test_prepare_caltech_counts_and_fewshot(caltech_root):
    from cpbench.data import prepare as prep

    ds = prep.load("caltech101", caltech_root)
    assert (len(ds.split.train), len(ds.split.val), len(ds.split.test)) == (4128, 1649, 2465)
    assert len(ds.split.classnames) == 100
    draws = {s: ds.fewshot(16, s) for s in (1, 2, 3)}
    for s, fs in draws.items():
        assert len(fs.train) == 1600
        assert len(fs.val) == 400
    assert draws[1].train != draws[2].train != draws[3].train
    # the portable file is read back identically, with relative paths
    files = sorted((ds.dir / "split_fewshot").glob("shot_16-seed_1-*.json"))
    assert len(files) == 1
    obj = json.loads(files[0].read_text())
    assert not any(p.startswith("/") for p, _, _ in obj["train"])
    assert [tuple(r) for r in obj["train"]] == [(i.path, i.label, i.classname) for i in draws[1].train]
    from cpbench.data.splits import base_new_labels

    base, new = base_new_labels(ds.split.train)
    assert (len(base), len(new)) == (50, 50)


@pytest.mark.slow
def test_run_zeroshot_and_coop_then_report(caltech_root, tmp_path, cli):
    res = tmp_path / "res"
    common = ["--dataset", "caltech101", "--backbone", "tiny", "--pretrained", "none", "--seeds", "1", "2",
              "--root", str(caltech_root), "--results", str(res), "--device", "cpu"]
    rc, out, err = cli("run", "zeroshot", *common)
    assert rc == 0, err
    rc, out, err = cli("run", "coop", *common, "--set", "epochs=1", "batch_size=64")
    assert rc == 0, err
    from cpbench.results.store import ResultStore

    df = ResultStore(res).read().frame
    assert len(df) == 8
    assert sorted(df.groupby("method").size().tolist()) == [4, 4]
    assert set(df["subset"]) == {"base", "new"}
    assert (df[df.subset == "base"]["n_classes"] == 50).all()
    assert (df[df.subset == "new"]["n_test"] + df[df.subset == "base"]["n_test"].values == 2465).all()
    for col in ("run_id", "config_hash", "accuracy", "n_test", "torch_version", "open_clip_version", "precision"):
        assert df[col].notna().all()
    rc, out, err = cli("report", "--format", "markdown", "--results", str(res))
    assert rc == 0, err
    assert "coop Base" in out and "zeroshot HM" in out and "**Average**" in out
    # re-running skips existing rows
    rc, out, err = cli("run", "zeroshot", *common)
    assert rc == 0 and len(ResultStore(res).read().frame) == 8
    rc, out, err = cli("report", "--format", "csv", "--results", str(res))
    assert rc == 0
    csv = pd.read_csv(__import__("io").StringIO(out))
    assert set(csv["method"]) == {"coop", "zeroshot"}


@pytest.mark.parametrize("args, needle", [
    (["run", "nosuchmethod", "--backbone", "tiny"], "unknown method"),
    (["run", "coop", "--dataset", "nosuchdata", "--backbone", "tiny"], "unknown dataset"),
    (["run", "coop", "--shots", "0", "--backbone", "tiny"], "--shots must be positive"),
    (["run", "coop", "--shots", "-3", "--backbone", "tiny"], "--shots must be positive"),
    (["prepare", "caltech101", "--shots", "0"], "--shots must be positive"),
    (["run", "coop", "--dataset", "caltech101", "--backbone", "tiny"], "not prepared"),
    (["run", "coop", "--backbone", "tiny"], "no prepared datasets"),
    (["prepare", "nosuchdata"], "unknown dataset"),
    (["prepare", "caltech101", "--from", "/nonexistent/dir"], "no such folder"),
    (["report"], "no results"),
    (["report", "--format", "pdf"], "--format"),
    (["run", "coop", "--seeds", "x"], "seeds"),
])
def test_bad_inputs_one_line_exit_2(args, needle, tmp_path, monkeypatch, cli_here):
    # in this process: the CLI's start-up (~7 s of imports) is what each case would cost otherwise;
    # tests/test_exit_codes.py runs the real process
    monkeypatch.setenv("CPBENCH_RESULTS", str(tmp_path / "res"))
    monkeypatch.setenv("CPBENCH_DATA", str(tmp_path / "data"))
    rc, out, err = cli_here(*args, "--root", str(tmp_path / "data")) if args[0] != "report" else cli_here(*args)
    assert rc == 2, (out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "res").exists()


def test_bad_set_and_config_exit_2_before_any_work(caltech_root, tmp_path, cli_here):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: [unclosed\n")
    cases = [
        (["--set", "epochs"], "malformed"),
        (["--set", "nosuchkey=1"], "unknown setting"),
        (["--set", "epochs=abc"], "must be int"),
        (["--set", "precision=fp8"], "precision must be"),
        (["--config", str(bad_yaml)], "not valid YAML"),
        (["--config", str(tmp_path / "missing.yaml")], "cannot read config"),
    ]
    for extra, needle in cases:
        rc, out, err = cli_here("run", "coop", "--dataset", "caltech101", "--backbone", "tiny", "--root",
                                str(caltech_root), "--results", str(tmp_path / "res"), *extra)
        assert rc == 2, (extra, err)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0], (extra, err)
        assert not (tmp_path / "res").exists()


def test_offline_without_weights_names_the_fix(tmp_path, caltech_root, cli):
    rc, out, err = cli("run", "zeroshot", "--dataset", "caltech101", "--backbone", "ViT-B-16", "--pretrained", "openai",
                       "--root", str(caltech_root), "--results", str(tmp_path / "res"),
                       env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}, timeout=300)
    assert rc == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("loading backbone")]
    assert len(lines) == 1 and "--weights" in lines[0] and "toy" in lines[0], err


def test_weights_from_local_checkpoint(tmp_path, tiny_backbone):
    from safetensors.torch import save_file

    from cpbench.models.backbone import load_backbone

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone.clip.state_dict().items()}, str(path))
    b = load_backbone("tiny", "none", weights=str(path), seed=123)
    for k, v in tiny_backbone.clip.state_dict().items():
        assert __import__("torch").equal(b.clip.state_dict()[k], v)


@pytest.mark.parametrize("args", [
    ["run", "nosuchmethod"],
    ["run", "coop", "--dataset", "nosuchdata"],
    ["run", "coop", "--seeds", "-1"],
    ["run", "coop", "--protocol", "nosuch"],
    ["run", "coop", "--shots", "1", "2"],          # base2new takes one --shots value (the protocol registry)
])
def test_typos_fail_before_torch_is_imported(args, tmp_path):
    """A mistyped name or number is answered in about a second: the checks run before anything
    imports torch (~6 s with torchvision)."""
    import subprocess
    import sys

    code = ("import sys\nfrom cpbench.cli import main\nsys.argv = ['cpbench', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args, "--root", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False"], (proc.stdout, proc.stderr)
