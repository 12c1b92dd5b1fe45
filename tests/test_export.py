"""Exports (issue 19) on the tiny random backbone and a miniature dataset, in-process and fast:

- every method's export, loaded with ``cpbench.load``, gives the logits the evaluation computed,
  on the training classes and (with ``with_classes`` and the recorded RNG seed) on the new ones;
- the file describes itself; bad files, wrong backbones and new classes for class-bound models are
  refused with one line; ``import cpbench`` stays free of torch;
- ``cpbench export`` finds one job or says how to narrow the choice;
- ``cpbench run --from-export`` re-evaluates a file: rows marked imported, the trained rows'
  accuracies and config hash, validated before the backbone loads; ``report`` keeps them apart;
- ``cpbench predict`` prints top-k per image and refuses bad inputs with exit code 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from evalcapture import capture_evaluations  # noqa: E402
from minidata import make_caltech  # noqa: E402

import cpbench  # noqa: E402
from cpbench.state import export, export_job  # noqa: E402
from cpbench.data import prepare as prep  # noqa: E402
from cpbench.errors import UserError  # noqa: E402
from cpbench.data.prepare import subset_items  # noqa: E402
from cpbench.runner import RunRequest, execute  # noqa: E402

SETS = ["epochs=2", "warmup_epochs=0", "lr=0.05", "batch_size=2", "test_batch_size=4", "precision=fp32"]
# every method (the roundtrip below trains each for 2 epochs on the tiny backbone)
METHODS = ["zeroshot", "coop", "kgcoop", "pre", "lamm", "coop_lamm", "cocoop", "cpl", "maple", "maple_lamm", "ivlp",
           "promptsrc", "coopvpt", "cocoopvpt", "linear_probe"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("export")
    make_caltech(r / "data")
    return r


def _train(root: Path, method: str, results: str, sets=SETS, shots=2, seed=1, **kw):
    """Run METHOD base2new in-process; (rows, the evaluations' recorded logits)."""
    with pytest.MonkeyPatch.context() as mp:
        got = capture_evaluations(mp)
        req = RunRequest(method=method, datasets=["caltech101"], seeds=[seed], shots=[shots], backbone="tiny",
                         pretrained="none", sets=list(sets), root=root / "data", results=root / results,
                         device="cpu", **kw)
        rows = execute(req, Console(quiet=True), Console(quiet=True))
    return rows, got


def _export(root: Path, method: str, results: str, out: Path, **kw) -> dict:
    t = export_job.find(root / results, root / "data", method, "caltech101", 1, **kw)
    return export_job.export(t, out)


def _paths(root: Path, subset: str) -> list[Path]:
    ds = prep.load("caltech101", root / "data")
    items, names, _ = subset_items(ds, subset, 0, 1, "test")
    return [ds.image_root / it.path for it in items], names


@pytest.fixture(scope="module")
def coop_file(root):
    rows, got = _train(root, "coop", "res-coopfile")
    out = root / "coop.safetensors"
    _export(root, "coop", "res-coopfile", out)
    return out, rows, got


# --------------------------------------------------------------------------- round trip


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_round_trips_to_the_evaluations_logits(root, method, tmp_path):
    rows, got = _train(root, method, f"res-{method}")
    out = tmp_path / f"{method}.safetensors"
    meta = _export(root, method, f"res-{method}", out)
    clf = cpbench.load(out, device="cpu")
    base_paths, base_names = _paths(root, "base")
    assert clf.classnames == base_names == meta["classnames"]
    before = torch.get_rng_state()
    logits = clf.logits(base_paths)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is left as it was
    assert logits.shape == got[0]["logits"].shape
    torch.testing.assert_close(logits, got[0]["logits"], rtol=0, atol=1e-6)
    right = int((logits.argmax(-1) == torch.tensor([it.label for it in got[0]["items"]])).sum())
    acc = 100.0 * right / logits.shape[0]   # as the evaluation counts it (a float32 mean of 2/3 is not 200/3)
    assert acc == rows[0]["accuracy"]
    if len(got) > 1:  # the new classes, with the seed their evaluation used
        new_paths, new_names = _paths(root, "new")
        new = clf.with_classes(new_names)
        new.sample_seed = meta["job"]["targets"][1]["rng_seed"]
        torch.testing.assert_close(new.logits(new_paths), got[1]["logits"], rtol=0, atol=1e-6)
    else:
        assert method == "linear_probe"
    # the loaded state is what was learned: a freshly built model scores differently
    state = export.learned_state(export.read(out)[1])
    if state:
        from cpbench.methods.registry import get_method_class
        from cpbench.models.backbone import load_backbone

        cls = get_method_class(method)
        fresh = cls(load_backbone("tiny", "none"), base_names, clf.model.options, template=clf.model.template)
        assert any(not torch.equal(v.float(), fresh.learned_state()[k].float()) for k, v in state.items())


def test_the_file_describes_itself(coop_file):
    out, rows, _ = coop_file
    meta = export.read_meta(out)
    _, tensors = export.read(out)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as fh:
        raw = fh.metadata()
    assert raw["cpbench.format"] == "cpbench-prompts" and raw["cpbench.format_version"] == "1"
    assert meta["method"] == "coop" and meta["config_hash"] == rows[0]["config_hash"]
    assert meta["config"]["options"]["n_ctx"] == 4 and meta["config"]["train"]["epochs"] == 2
    b = meta["backbone"]
    assert (b["name"], b["pretrained"], b["weights_sha256"]) == ("tiny", "none", None) and len(b["fingerprint"]) == 16
    assert meta["classnames"] == ["accordion", "airplane"] and meta["template"] == "a photo of a {}."
    job = meta["job"]
    assert (job["protocol"], job["train_dataset"], job["train_subset"], job["shots"], job["seed"]) == \
        ("base2new", "caltech101", "base", 2, 1)
    assert [(t["dataset"], t["subset"]) for t in job["targets"]] == [("caltech101", "base"), ("caltech101", "new")]
    assert [r["accuracy"] for r in job["rows"]] == [r["accuracy"] for r in rows]
    assert set(meta["versions"]) == {"cpbench", "torch", "open_clip"}
    assert sorted(tensors) == ["logit_scale", "state.ctx", "text_features"]
    assert meta["text_features"] and tensors["text_features"].shape == (2, 64)
    torch.testing.assert_close(tensors["text_features"].norm(dim=-1), torch.ones(2))


def test_text_features_only_for_methods_with_a_fixed_text_classifier():
    from cpbench.methods.registry import get_method_class

    fixed = {m for m in METHODS if get_method_class(m).text_classifier}
    assert fixed == {"zeroshot", "coop", "kgcoop", "pre", "lamm", "coop_lamm"}


def test_import_cpbench_does_not_import_torch():
    code = "import cpbench, sys; assert 'torch' not in sys.modules and 'load' in cpbench.__all__; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# --------------------------------------------------------------------------- refusals


def test_bad_files_are_refused_with_one_line(tmp_path, coop_file):
    from safetensors.torch import save_file

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    newer = tmp_path / "newer.safetensors"
    meta, tensors = export.read(coop_file[0])
    save_file(tensors, str(newer), metadata={"cpbench.format": "cpbench-prompts", "cpbench.format_version": "2",
                                             "cpbench.meta": json.dumps(meta)})
    for path, words in ((tmp_path / "missing.safetensors", "no such export file"), (junk, "not a safetensors file"),
                        (plain, "not a cpbench export"), (newer, "upgrade cpbench")):
        with pytest.raises(UserError, match=words):
            cpbench.load(path)


def test_a_backbone_other_than_the_files_is_refused(coop_file):
    import open_clip

    from cpbench.models.backbone import TINY_CFG, load_backbone

    out = coop_file[0]
    with pytest.raises(UserError, match="not those .* was learned on"):
        cpbench.load(out, backbone=load_backbone("tiny", "none", seed=1))  # other random weights
    with pytest.raises(UserError, match="learned on backbone tiny"):
        cpbench.load(out, backbone="toy")
    with pytest.raises(UserError, match="not on a local checkpoint; drop --weights"):
        cpbench.load(out, weights=str(out))
    same = load_backbone("tiny", "none")
    quick = open_clip.model.CLIP(embed_dim=TINY_CFG["embed_dim"], vision_cfg=TINY_CFG["vision_cfg"],
                                 text_cfg=TINY_CFG["text_cfg"], quick_gelu=True)
    quick.load_state_dict(same.clip.state_dict())
    with pytest.raises(UserError, match="QuickGELU"):
        cpbench.load(out, backbone=quick)
    # the same weights given as a cpbench Backbone or as a plain open_clip model are accepted
    paths, _ = _paths(out.parent, "base")
    ref = cpbench.load(out).logits(paths)
    torch.testing.assert_close(cpbench.load(out, backbone=same).logits(paths), ref, rtol=0, atol=0)
    torch.testing.assert_close(cpbench.load(out, backbone=load_backbone("tiny", "none").clip).logits(paths), ref,
                               rtol=0, atol=0)


def test_class_bound_models_refuse_new_classes(root, tmp_path):
    # CSC runs few_shot: base2new refuses it (no context for the new classes)
    _train(root, "coop", "res-csc", sets=SETS + ["csc=true"], protocol="few_shot")
    csc = tmp_path / "csc.safetensors"
    _export(root, "coop", "res-csc", csc)
    clf = cpbench.load(csc)
    assert clf.with_classes(list(clf.classnames)).classnames == clf.classnames  # its own classes: fine
    with pytest.raises(UserError, match="cannot score classes it was not trained on"):
        clf.with_classes(["anchor", "ant"])
    _train(root, "linear_probe", "res-lp")
    lp = tmp_path / "lp.safetensors"
    _export(root, "linear_probe", "res-lp", lp)
    with pytest.raises(UserError, match="cannot score classes it was not trained on"):
        cpbench.load(lp).with_classes(["anchor", "ant"])


def test_predictions_and_inputs(coop_file, tmp_path):
    out = coop_file[0]
    clf = cpbench.load(out)
    paths, names = _paths(out.parent, "base")
    preds = clf.predict(paths[:3], top_k=5)
    assert len(preds) == 3 and all(len(p) == 2 for p in preds)  # top_k is capped at the class count
    assert all(abs(sum(v for _, v in p) - 1) < 1e-5 and p[0][1] >= p[1][1] for p in preds)
    from PIL import Image

    with Image.open(paths[0]) as im:
        torch.testing.assert_close(clf.logits(im.copy()), clf.logits(str(paths[0])), rtol=0, atol=0)
    torch.testing.assert_close(clf.logits(clf.transform(Image.open(paths[0]))), clf.logits(paths[0]), rtol=0, atol=0)
    with pytest.raises(UserError, match="is a folder"):
        clf.logits(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not an image"):
        clf.logits([tmp_path / "notes.txt"])


# --------------------------------------------------------------------------- selecting the job


def test_export_selects_one_job_or_says_how_to_narrow(root, coop_file, tmp_path):
    _train(root, "coop", "res-two", shots=1)
    _train(root, "coop", "res-two", shots=2)
    with pytest.raises(UserError, match=r"2 trained jobs .* narrow with --shots.*--checkpoint"):
        export_job.find(root / "res-two", root / "data", "coop", "caltech101", 1)
    t = export_job.find(root / "res-two", root / "data", "coop", "caltech101", 1, shots=1)
    assert t.job.shots == 1 and t.checkpoint_dir.is_dir()
    by_dir = export_job.find(root / "elsewhere", root / "data", None, None, None, checkpoint=t.checkpoint_dir)
    assert by_dir.training_key == t.training_key  # the results folder follows from the checkpoint's
    with pytest.raises(UserError, match="no trained job coop on caltech101 seed 7"):
        export_job.find(root / "res-two", root / "data", "coop", "caltech101", 7)
    with pytest.raises(UserError, match="no results under"):
        export_job.find(tmp_path, root / "data", "coop", "caltech101", 1)


# --------------------------------------------------------------------------- importing back


def test_run_from_export_reproduces_the_rows_marked_imported(root, coop_file, monkeypatch):
    out, trained, _ = coop_file
    rows, _ = _train(root, "coop", "res-coopfile", state_from=f"export:{out}")
    assert [r["accuracy"] for r in rows] == [r["accuracy"] for r in trained]
    assert {r["config_hash"] for r in rows} == {trained[0]["config_hash"]}
    assert {r["imported"] for r in rows} == {f"export:{export.identity(str(out))}"} and rows[0]["epochs"] == 0
    assert {r["job_key"] for r in rows}.isdisjoint({r["job_key"] for r in trained})
    # a file that does not fit the run fails before the backbone loads
    from cpbench.models import backbone as bb

    monkeypatch.setattr(bb, "load_backbone", lambda *a, **k: pytest.fail("loaded the backbone"))
    for kw, words in ((dict(method="cocoop"), "holds coop prompts, not cocoop"),
                      (dict(seeds=[1, 2]), "one export is one seed"),
                      (dict(shots=[4]), "learned from 2 shots"),
                      (dict(backbone="toy"), "learned on backbone tiny"),
                      (dict(protocol="few_shot"), "classes of caltech101/base")):
        args = dict(method="coop", datasets=["caltech101"], seeds=[1], shots=[2], backbone="tiny", pretrained="none",
                    root=root / "data", results=root / "res-coopfile", device="cpu", state_from=f"export:{out}")
        args.update(kw)
        with pytest.raises(UserError, match=words):
            execute(RunRequest(**args), Console(quiet=True), Console(quiet=True))


def test_report_keeps_imported_rows_apart():
    from reporting import b2n
    from cpbench.results import report

    rows = b2n("coop", "dtd", [50.0], [40.0]) + b2n("coop", "dtd", [60.0], [45.0], imported="export:abc")
    rep = report.build(pd.DataFrame(rows))
    labels = {c.entry.label for t in rep.tables for r in t.rows for c in r.cells if c.entry is not None}
    assert len(labels) == 2 and any("imported export" in x for x in labels), labels


# --------------------------------------------------------------------------- cpbench predict


def test_predict_cli(coop_file, tmp_path, cli_here, cli):
    out = coop_file[0]
    images = out.parent / "data" / "caltech-101" / "101_ObjectCategories" / "anchor"
    n = len(list(images.iterdir()))
    code, stdout, err = cli_here("predict", "--prompts", out, images, "--top-k", "5")
    assert code == 0, err
    lines = stdout.splitlines()
    assert len(lines) == n and all(ln.startswith(str(images)) and "accordion" in ln and "airplane" in ln for ln in lines)
    names = tmp_path / "names.txt"
    names.write_text("anchor\nant\naccordion\n")
    code, stdout, err = cli_here("predict", "--prompts", out, images, "--classes", names, "--format", "json")
    got = json.loads(stdout)
    assert code == 0 and len(got) == n and {len(g["top"]) for g in got} == {3}
    code, stdout, _ = cli_here("predict", "--prompts", out, images, "--format", "csv", "--top-k", "1")
    assert code == 0 and stdout.splitlines()[0] == "path,rank,class,probability" and len(stdout.splitlines()) == n + 1
    (tmp_path / "notes.txt").write_text("not an image")
    for args, words in (((tmp_path / "notes.txt",), "is not an image"),
                        ((images, "--backbone", "toy"), "learned on backbone tiny"),
                        ((images, "--format", "xml"), "--format must be one of")):
        code, stdout, err = cli_here("predict", "--prompts", out, *args)
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1 and words in err, err
    # and as a real process: one line on stderr, exit code 2
    code, stdout, err = cli("predict", "--prompts", str(out), str(tmp_path / "notes.txt"))
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1 and "is not an image" in err, err


def test_predict_cli_refuses_new_classes_for_csc(root, tmp_path, cli_here):
    _train(root, "coop", "res-csc2", sets=SETS + ["csc=true"], protocol="few_shot")
    csc = tmp_path / "csc.safetensors"
    _export(root, "coop", "res-csc2", csc)
    names = tmp_path / "names.txt"
    names.write_text("anchor\nant\n")
    images = root / "data" / "caltech-101" / "101_ObjectCategories" / "anchor"
    code, stdout, err = cli_here("predict", "--prompts", csc, images, "--classes", names)
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1
    assert "cannot score classes it was not trained on" in err


def test_the_weights_fingerprint_survives_fp16_but_not_other_weights():
    from cpbench.models.backbone import load_backbone

    a = load_backbone("tiny", "none")
    fp = export.weights_fingerprint(a)
    assert export.weights_fingerprint(load_backbone("tiny", "none").half()) == fp  # precision=fp16 runs
    assert export.weights_fingerprint(load_backbone("tiny", "none", seed=1)) != fp


def test_run_from_export_cli_takes_the_files_job_by_default(root, coop_file, tmp_path, cli_here):
    out, trained, _ = coop_file
    code, _, err = cli_here("run", "--from-export", out, "--root", root / "data",
                        "--results", tmp_path / "res", "--device", "cpu")  # method, seed, shots, dataset, backbone: the file's
    assert code == 0, err
    rows = pd.read_parquet(tmp_path / "res" / "shards")
    assert list(rows["accuracy"]) == [r["accuracy"] for r in trained]
    assert set(rows["method"]) == {"coop"} and set(rows["seed"]) == {1} and set(rows["shots"]) == {2}
    assert set(rows["backbone"]) == {"tiny"} and rows["imported"].str.startswith("export:").all()
    code, _, err = cli_here("run", "--from-export", out, "--suite", "benchmarks/toy.yaml")
    assert code == 2 and "drop --suite" in err
