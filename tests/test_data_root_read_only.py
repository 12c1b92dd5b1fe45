"""A lab's shared, read-only data root (issue 29): ``run`` never writes under it. Few-shot draws that
``prepare`` did not store are drawn in memory (the same draw), derived files go to the user cache,
and nothing under the root changes: checked with write permission really enforced (as root, the
run drops the capabilities that bypass file permissions) and by a listing of every path with its
mode, size, mtime and content hash before and after."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cpbench.data import prepare as prep
from cpbench.errors import UserError

sys.path.insert(0, str(Path(__file__).parent))
from test_datasets_custom import suggestions

SETS = ["--set", "epochs=2", "batch_size=8", "test_batch_size=64"]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: mode, size, mtime and, for files, the content hash."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


def enforced_prefix() -> list[str]:
    """A command prefix under which write permission holds for this user: none for an ordinary user;
    for root, setpriv without the capabilities that override file permissions (skip without it)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"] if setpriv else []
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"cpbench-ro-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    probe.chmod(0o555)
    try:
        if not prefix or subprocess.run([*prefix, "touch", str(probe / "x")], capture_output=True).returncode == 0:
            pytest.skip("running as root without a way to enforce write permission (setpriv)")
    finally:
        probe.chmod(0o755)
        shutil.rmtree(probe)
    return prefix


def read_only(root: Path) -> None:
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files, "."]:
            p = Path(dirpath) / name
            p.chmod(p.stat().st_mode & ~0o222)


def writable(root: Path) -> None:
    for dirpath, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            p = Path(dirpath) / name
            p.chmod(p.stat().st_mode | 0o200)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("ro") / "data"
    prep.prepare("toy_shapes", root, shots=[2], seeds=[1])
    return root


@pytest.mark.slow
def test_run_on_a_read_only_root_writes_nothing_there(prepared, tmp_path):
    prefix = enforced_prefix()
    res, cache = tmp_path / "res", tmp_path / "cache"
    before = snapshot(prepared)
    read_only(prepared)
    try:
        for seed in ("1", "2"):  # seed 1's 2-shot draw was prepared; seed 2's was not
            proc = subprocess.run(
                [*prefix, sys.executable, "-m", "cpbench", "run", "coop", "--dataset", "toy_shapes", "--backbone",
                 "toy", "--seeds", seed, "--shots", "2", *SETS, "--root", str(prepared), "--results", str(res),
                 "--device", "cpu"], capture_output=True, text=True, env={**os.environ, "CPBENCH_CACHE": str(cache)},
                timeout=600)
            assert proc.returncode == 0, proc.stderr
            assert "2 new result row(s)" in proc.stdout
    finally:
        writable(prepared)
    assert snapshot(prepared) == before
    from cpbench.results.store import ResultStore

    df = ResultStore(res).read().frame
    assert sorted(df["seed"]) == [1, 1, 2, 2] and set(df["subset"]) == {"base", "new"}
    assert any((cache / "features").iterdir())  # the derived files went to the user cache


def test_a_draw_not_prepared_is_the_draw_prepare_would_store(prepared, tmp_path):
    ds = prep.load("toy_shapes", prepared)
    before = snapshot(prepared)
    in_memory = ds.fewshot(4, 7)
    assert snapshot(prepared) == before  # nothing written by a run's read
    copy = tmp_path / "data"
    shutil.copytree(prepared, copy)
    stored = prep.load("toy_shapes", copy).fewshot(4, 7, write=True)
    assert stored == in_memory
    assert prep.load("toy_shapes", copy).fewshot(4, 7) == in_memory  # read back from the file


@pytest.mark.parametrize("damage", ["{\"train\": [", "{\"split_sha256\": 1}", "[]"])
def test_a_corrupt_few_shot_file_names_itself_and_a_repair_that_works(prepared, tmp_path, damage, cli_here):
    root = tmp_path / "data"
    shutil.copytree(prepared, root)
    (file,) = (root / "toy_shapes" / "split_fewshot").glob("shot_2-seed_1-*.json")
    good = json.loads(file.read_text())
    file.write_text(damage)
    rc, out, err = cli_here("run", "coop", "--dataset", "toy_shapes", "--backbone", "toy", "--seeds", "1", "--shots", "2",
                       "--root", str(root), "--results", str(tmp_path / "res"), "--device", "cpu", *SETS)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and str(file) in err and "Traceback" not in err, err
    (advice,) = suggestions(err)
    rc, out, err2 = cli_here(*advice)
    assert rc == 0, err2
    assert json.loads(file.read_text())["train"] == good["train"]


def test_a_split_with_a_wrong_type_or_truncated_is_one_line_and_force_repairs_it(prepared, tmp_path, cli_here):
    root = tmp_path / "data"
    shutil.copytree(prepared, root)
    split = next((root / "toy_shapes").glob("split_zhou_*.json"))
    good = split.read_text()
    for damage in (json.dumps({**json.loads(good), "val": 5}), good[: len(good) // 2]):
        split.write_text(damage)
        rc, out, err = cli_here("run", "coop", "--dataset", "toy_shapes", "--backbone", "toy", "--seeds", "1",
                           "--root", str(root), "--results", str(tmp_path / "res"), "--device", "cpu")
        assert rc == 2 and len(err.strip().splitlines()) == 1 and str(split) in err, err
        assert "Traceback" not in err
        (advice,) = suggestions(err)
        assert "--force" in advice
        rc, out, err = cli_here(*advice)
        assert rc == 0, err
        assert json.loads(split.read_text()) == json.loads(good)


def test_a_split_read_directly_names_its_problem():
    from cpbench.data.splits import split_from_json

    with pytest.raises(UserError, match=r"s\.json \[val\]: expected a list .* found int 5; fix it"):
        split_from_json({"train": [], "val": 5, "test": []}, "s.json", "fix it")
    with pytest.raises(UserError, match="wrong types"):
        split_from_json({"train": [["a", True, "x"]], "val": [], "test": []}, "s.json", "fix it")

