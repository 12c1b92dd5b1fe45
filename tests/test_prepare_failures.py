"""``prepare`` refuses bad inputs with one line and exit 2 and leaves nothing half-written
(issue 17): no empty dataset or download folder, no lock file in a data root it created.

Through the CLI in-process; downloads are refused by a patched downloader (an offline machine)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run_main  # noqa: E402
from test_datasets_download import build, jpeg  # noqa: E402


def _cli(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    code = run_main(monkeypatch, *argv)
    got = capsys.readouterr()
    return code, got.out, got.err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


def _everything_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _classes(tmp_path: Path, n_classes: int, n_images: int) -> Path:
    src = tmp_path / "mine"
    for c in range(n_classes):
        (src / f"class_{c}").mkdir(parents=True)
        for i in range(n_images):
            (src / f"class_{c}" / f"{i}.jpg").write_bytes(jpeg(10 * c + i))
    return src


def test_one_class_custom_dataset_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    src = _classes(tmp_path, 1, 6)
    code, _, err = _cli(monkeypatch, capsys, "prepare", "single", "--from-folder", str(src), "--root",
                        str(tmp_path / "data"))
    assert code == 2 and "at least 2" in _one_error_line(err)
    assert not (tmp_path / "data").exists()


def test_custom_shots_larger_than_the_smallest_class(tmp_path, monkeypatch, capsys):
    src = _classes(tmp_path, 2, 6)  # 50/20/30: 3 training images per class
    code, _, err = _cli(monkeypatch, capsys, "prepare", "mine", "--from-folder", str(src), "--shots", "16",
                        "--root", str(tmp_path / "data"))
    line = _one_error_line(err)
    assert code == 2 and "--shots 16" in line and "only 3 training image(s)" in line and "--shots 3 or fewer" in line
    assert not (tmp_path / "data").exists()


def test_negative_seeds_are_refused(tmp_path, monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "prepare", "toy_shapes", "--seeds", "-1", "--shots", "1",
                        "--root", str(tmp_path / "data"))
    assert code == 2 and "--seeds must be >= 0" in _one_error_line(err)
    assert not (tmp_path / "data").exists()


def test_truncated_archive_from_folder_is_a_user_error_not_an_abort(tmp_path, monkeypatch, capsys):
    files, _, _ = build("oxford_pets")
    given = tmp_path / "given"
    given.mkdir()
    for name, data in files.items():
        (given / name).write_bytes(data[: len(data) * 2 // 3] if name == "images.tar.gz" else data)
    code, _, err = _cli(monkeypatch, capsys, "prepare", "oxford_pets", "--from", str(given), "--root",
                        str(tmp_path / "data"))
    line = _one_error_line(err)
    assert code == 2 and "images.tar.gz is truncated or corrupt" in line, err
    assert "aborted" not in err.lower()
    assert _everything_under(tmp_path / "data") == []  # no dataset folder, no lock, no download folder


def test_offline_prepare_names_every_file_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    from cpbench.data import fetch

    def offline(url, dest, *a, **k):
        raise ConnectionError(f"{url}: <urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(fetch, "download", offline)
    code, _, err = _cli(monkeypatch, capsys, "prepare", "oxford_pets", "--root", str(tmp_path / "data"))
    line = _one_error_line(err)
    assert code == 2
    for name in ("images.tar.gz", "annotations.tar.gz", "split_zhou_OxfordPets.json"):
        assert name in line.split("--from DIR:")[1], line
    assert not (tmp_path / "data").exists()


def test_from_folder_missing_files_are_all_named(tmp_path, monkeypatch, capsys):
    files, _, _ = build("oxford_pets")
    given = tmp_path / "given"
    given.mkdir()
    (given / "split_zhou_OxfordPets.json").write_bytes(files["split_zhou_OxfordPets.json"])
    root = tmp_path / "data"
    root.mkdir()
    code, _, err = _cli(monkeypatch, capsys, "prepare", "oxford_pets", "--from", str(given), "--root", str(root))
    line = _one_error_line(err)
    assert code == 2 and "lacks images.tar.gz, annotations.tar.gz" in line
    assert _everything_under(root) == []  # the root existed; what prepare made inside it is gone


def test_an_existing_root_keeps_its_other_datasets_and_locks(tmp_path, monkeypatch, capsys):
    """Only what this prepare created is removed: a root in use keeps its lock folder, and the failed
    prepare's own lock file is gone (issue 29: no stale `.locks/<dataset>.lock`)."""
    root = tmp_path / "data"
    (root / ".locks").mkdir(parents=True)
    (root / ".locks" / "other.lock").write_text("")
    (root / "other").mkdir()
    files, _, _ = build("oxford_pets")
    given = tmp_path / "given"
    given.mkdir()
    code, _, _ = _cli(monkeypatch, capsys, "prepare", "oxford_pets", "--from", str(given), "--root", str(root))
    assert code == 2
    assert _everything_under(root) == [".locks", ".locks/other.lock", "other"]


@pytest.mark.parametrize("target", ["afile/x", "afile"])
def test_root_under_a_file(tmp_path, monkeypatch, capsys, target):
    (tmp_path / "afile").write_text("x")
    code, _, err = _cli(monkeypatch, capsys, "prepare", "toy_shapes", "--root", str(tmp_path / target))
    assert code == 2 and "--root" in _one_error_line(err)
