"""Your own data: a class-per-folder directory or a CSV becomes a dataset that every method and
protocol can use; ``--check`` names a deleted image and a truncated JPEG."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pytest

from cpbench.data import prepare as prep

sys.path.insert(0, str(Path(__file__).parent))
from conftest import CALTECH_SRC  # noqa: E402
from test_datasets_download import jpeg  # noqa: E402


def suggestions(text: str) -> list[list[str]]:
    """The `cpbench ...` commands a message suggests, as argument lists without `cpbench`."""
    import re
    import shlex

    return [shlex.split(m)[1:] for m in re.findall(r"`(cpbench [^`]+)`", text)]


def _folder(tmp_path, classes=("cat_a", "dog_b", "eel_c"), n=5) -> Path:
    src = tmp_path / "mine"
    k = 0
    for c in classes:
        (src / c).mkdir(parents=True)
        for i in range(n):
            k += 1
            (src / c / f"{i:03d}.jpg").write_bytes(jpeg(k))
    (src / "cat_a" / "notes.txt").write_text("not an image")
    return src


def test_folder_to_dataset_then_check_finds_deleted_and_truncated(tmp_path, cli):
    src = _folder(tmp_path)
    root = tmp_path / "data"
    rc, out, err = cli("prepare", "mine", "--from-folder", str(src), "--root", str(root), "--shots", "1",
                       "--template", "a photo of my {}.")
    assert rc == 0, err
    assert "train 6 / val 3 / test 6, 3 classes, base 2 / new 1" in out
    desc = json.loads((root / "mine" / "cpbench_dataset.json").read_text())
    assert desc["template"] == "a photo of my {}." and desc["expected"]["classes"] == 3
    ds = prep.load("mine", root)
    assert ds.split.classnames == ["cat_a", "dog_b", "eel_c"] and ds.spec.template == "a photo of my {}."
    # same seed -> same split; a stratified 50/20/30 per class
    assert [sum(1 for i in ds.split.train if i.label == c) for c in range(3)] == [2, 2, 2]  # round(2.5) == 2, as CoOp
    rc, out, _ = cli("list", "--root", str(root))
    assert rc == 0 and "mine" in out and "15" in out and "KiB" in out
    rc, out, err = cli("prepare", "mine", "--check", "--root", str(root))
    assert rc == 0 and "mine: ok" in out, out + err
    # damage it: one image deleted, one truncated
    gone, cut = ds.split.test[0].path, ds.split.train[1].path
    assert (ds.image_root / cut).stat().st_nlink == 2  # hard-linked to your file, not copied
    (ds.image_root / gone).unlink()
    data = (ds.image_root / cut).read_bytes()
    (ds.image_root / cut).write_bytes(data[: len(data) // 2])
    rc, out, err = cli("prepare", "mine", "--check", "--root", str(root))
    assert rc == 2, out + err
    assert f"missing: {gone}" in out and f"unreadable: {cut}" in out
    # the advice works as printed: it adopts your files again; the truncated image (hard-linked, so
    # truncated in your folder too) is then refused by name, and --skip-bad-images leaves it out
    (advice,) = suggestions(err)
    assert advice[:3] == ["prepare", "mine", "--from-folder"] and "--template" in advice
    rc, out, err = cli(*advice)
    assert rc == 2 and cut in err and "--skip-bad-images" in err and len(err.strip().splitlines()) == 1, err
    rc, out, err = cli(*advice, "--skip-bad-images")
    assert rc == 0 and "skipped 1 file(s) that do not decode" in err, err
    rc, out, err = cli("prepare", "mine", "--check", "--root", str(root))
    assert rc == 0 and "mine: ok" in out, out + err


def test_csv_with_classnames_and_given_split(tmp_path):
    from cpbench.data.custom import make_custom

    src = _folder(tmp_path, n=3)
    (tmp_path / "names.txt").write_text("eel c\ncat a\ndog b\n")
    rows = ["path,label"] + [f"{c}/{i:03d}.jpg,{k}" for k, c in enumerate(["eel_c", "cat_a", "dog_b"]) for i in range(3)]
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    spec = make_custom("fromcsv", tmp_path / "data", csv_file=src / "labels.csv",
                       classnames_file=tmp_path / "names.txt")
    ds, info = prep.prepare("fromcsv", tmp_path / "data", spec=spec)
    assert ds.split.classnames == ["eel c", "cat a", "dog b"]  # class-name file order
    assert (len(ds.split.train), len(ds.split.val), len(ds.split.test)) == (3, 3, 3)
    assert prep.load("fromcsv", tmp_path / "data").split == ds.split
    from cpbench.errors import UserError

    with pytest.raises(UserError, match="built-in"):
        make_custom("caltech101", tmp_path / "data", src, builtin=("caltech101",))
    with pytest.raises(UserError, match="at least 3"):
        make_custom("small", tmp_path / "data", _folder(tmp_path / "x", n=2))


@pytest.mark.skipif(not (CALTECH_SRC / "101_ObjectCategories.tar.gz").exists(),
                    reason="../shared/datasets/caltech101 is not available")
def test_caltech_subset_folder_trains_coop_base_to_new(tmp_path, cli):
    src = tmp_path / "subset"
    want = {"accordion", "anchor", "ant", "barrel"}
    taken: dict[str, int] = {}
    with tarfile.open(CALTECH_SRC / "101_ObjectCategories.tar.gz", "r|gz") as tf:
        for m in tf:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and parts[1] in want and taken.get(parts[1], 0) < 8:
                taken[parts[1]] = taken.get(parts[1], 0) + 1
                out = src / parts[1] / parts[2]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tf.extractfile(m).read())
            if len(taken) == len(want) and all(v == 8 for v in taken.values()):
                break
    root, res = tmp_path / "data", tmp_path / "res"
    rc, out, err = cli("prepare", "my_set", "--from-folder", str(src), "--root", str(root))
    assert rc == 0, err
    assert "train 16 / val 8 / test 8, 4 classes, base 2 / new 2" in out
    rc, out, err = cli("run", "coop", "--dataset", "my_set", "--backbone", "tiny", "--pretrained", "none",
                       "--set", "epochs=1", "--seeds", "1", "--shots", "2", "--root", str(root),
                       "--results", str(res), "--device", "cpu")
    assert rc == 0, err
    from cpbench.results.store import ResultStore

    df = ResultStore(res).read().frame
    assert sorted(df["subset"]) == ["base", "new"]
    assert set(df["eval_dataset"]) == {"my_set"}
    assert sorted(df["n_test"]) == [4, 4] and sorted(df["n_classes"]) == [2, 2]


def test_a_text_file_named_jpg_is_refused_by_name_or_skipped_and_counted(tmp_path, cli_here):
    src = _folder(tmp_path, n=6)
    (src / "dog_b" / "fake.jpg").write_text("this is text, not a JPEG\n")
    root, res = tmp_path / "data", tmp_path / "res"
    rc, out, err = cli_here("prepare", "mine", "--from-folder", str(src), "--root", str(root))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "dog_b/fake.jpg" in err, err
    assert "--skip-bad-images" in err and not (root / "mine").exists()  # nothing half-written
    rc, out, err = cli_here("prepare", "mine", "--from-folder", str(src), "--root", str(root), "--skip-bad-images")
    assert rc == 0, err
    said = " ".join(err.split())  # (a narrow terminal may wrap it)
    assert "skipped 1 file(s) that do not decode as images (--skip-bad-images): dog_b/fake.jpg" in said
    assert "train 9 / val 3 / test 6, 3 classes" in out  # 18 real images, the fake one left out
    assert json.loads((root / "mine" / "cpbench_dataset.json").read_text())["skipped_images"] == ["dog_b/fake.jpg"]
    rc, out, err = cli_here("run", "coop", "--dataset", "mine", "--backbone", "tiny", "--pretrained", "none", "--seeds", "1",
                       "--shots", "1", "--set", "epochs=1", "--root", str(root), "--results", str(res),
                       "--device", "cpu")
    assert rc == 0 and "2 new result row(s)" in out, err


def test_a_run_on_a_damaged_image_names_the_check_of_its_dataset(tmp_path, cli_here):
    src = _folder(tmp_path)
    root = tmp_path / "data"
    rc, _, err = cli_here("prepare", "mine", "--from-folder", str(src), "--root", str(root))
    assert rc == 0, err
    from cpbench.data.images import load_image
    from cpbench.errors import UserError

    ds = prep.load("mine", root)
    bad = ds.image_root / ds.split.test[0].path
    bad.unlink()
    bad.write_text("text")  # a copy, not your file, is damaged
    with pytest.raises(UserError) as exc:
        load_image(bad)
    (advice,) = suggestions(str(exc.value))
    assert advice == ["prepare", "mine", "--check", "--root", str(root)]
    rc, out, err = cli_here(*advice)
    assert rc == 2 and f"unreadable: {ds.split.test[0].path}" in out
    (repair,) = suggestions(err)
    rc, out, err = cli_here(*repair)  # adopting your (intact) file again repairs it
    assert rc == 0, err
    rc, out, err = cli_here(*advice)
    assert rc == 0 and "mine: ok" in out, out + err
