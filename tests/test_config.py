"""Config layering (cpbench/config.py): every block a config file may hold is read, from the shipped
YAML and from a --config file alike, in the documented order (later wins), or refused in one line;
the default configuration of every (method, protocol, dataset, shots) keeps the hash it had before
the layering was made whole (tests/fixtures/config_hashes.json, recorded from main at 865e372); and
the two configs of issue 28's acceptance train what they say, through the CLI on the toy world."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from cpbench.config import resolve
from cpbench.errors import UserError
from cpbench.methods.coop import CoOpOptions
from cpbench.protocols.registry import config_protocol
from cpbench.results.store import ResultStore

FIXTURES = Path(__file__).parent / "fixtures"


def _resolve(tmp_path, user: dict | None, protocol="few_shot", dataset="dtd", shots=4, imported=None):
    path = None
    if user is not None:
        path = tmp_path / "user.yaml"
        path.write_text(yaml.safe_dump(user), encoding="utf-8")
    return resolve("coop", CoOpOptions, protocol, dataset=dataset, shots=shots, config_file=path, imported=imported)


# ----------------------------------------------------------------------------- nothing moved
def test_every_default_configuration_keeps_its_hash():
    spec = importlib.util.spec_from_file_location("make_config_hashes", FIXTURES / "make_config_hashes.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    want = json.loads((FIXTURES / "config_hashes.json").read_text(encoding="utf-8"))
    got = maker.record()
    assert got["datasets"] == want["datasets"] and got["shots"] == want["shots"]
    changed = []
    for method, w in want["methods"].items():
        assert method in got["methods"], f"{method} is in the fixture but no longer a method"
        g = got["methods"][method]
        for protocol, rows in w["index"].items():
            for d, (wr, gr) in enumerate(zip(rows, g["index"][protocol])):
                for k, wi, gi in zip(want["shots"], wr, gr):
                    if w["hashes"][wi] != g["hashes"][gi]:
                        changed.append(f"{method} {protocol} {want['datasets'][d]} {k}-shot")
    assert not changed, f"{len(changed)} default configurations changed, e.g. {changed[:5]}"
    assert sum(len(rows) * len(want["shots"]) for w in want["methods"].values() for rows in w["index"].values()) \
        >= 20 * 6 * 22 * 5


def test_the_shipped_per_shot_epochs_stay_few_shot_only():
    """coop.yaml's per-shot epochs (now under protocols.few_shot.shots) apply to few-shot jobs
    only; ImageNet keeps its 50 epochs."""
    def epochs(protocol, dataset, shots):
        return resolve("coop", CoOpOptions, protocol, dataset=dataset, shots=shots).train.epochs

    assert [epochs("few_shot", "dtd", k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert epochs("few_shot", "imagenet", 1) == 50
    assert {epochs("base2new", "dtd", k) for k in (1, 2, 4, 16)} == {200}
    assert epochs("cross_dataset", "imagenet", 1) == 50


# ----------------------------------------------------------------------------- the shipped defaults
def test_official_defaults_per_protocol():
    from cpbench.methods.registry import get_method_class

    def r(m, protocol="base2new", dataset=None):
        return resolve(m, get_method_class(m).Options, protocol, dataset=dataset, shots=16)

    c = r("cocoop")
    assert (c.train.epochs, c.train.batch_size, c.train.lr) == (10, 1, 0.002)
    c = r("maple")
    assert (c.train.epochs, c.train.batch_size, c.train.lr, c.options.depth, c.options.n_ctx) == (5, 4, 0.0035, 9, 2)
    for protocol in ("cross_dataset", "dg"):   # dg trains under the cross_dataset block
        c = r("maple", config_protocol(protocol))
        assert (c.train.epochs, c.train.lr, c.options.depth) == (2, 0.0026, 3)
    c = r("ivlp")
    assert (c.train.epochs, c.train.batch_size, c.train.lr, c.options.n_ctx_text, c.options.depth_vision) == (20, 4, 0.0025, 4, 9)
    c = r("promptsrc")
    assert (c.options.gpa_mean, c.options.gpa_std, c.options.text_loss_weight, c.options.image_loss_weight) == (15, 1, 25, 10)
    c = r("promptsrc", "cross_dataset")
    assert (c.options.depth_text, c.options.gpa_mean, c.options.gpa_std, c.train.epochs) == (3, 6, 10, 20)
    c = r("promptsrc", "few_shot", "caltech101")
    assert (c.train.epochs, c.options.gpa_mean, c.options.gpa_std) == (50, 30, 30)
    c = r("promptsrc", "few_shot", "eurosat")
    assert (c.train.epochs, c.options.gpa_mean, c.options.gpa_std) == (50, 45, 5)
    assert r("promptsrc", "base2new", "eurosat").options.gpa_mean == 15
    c = r("kgcoop")
    assert (c.train.epochs, c.train.batch_size, c.train.lr, c.options.kg_weight) == (100, 128, 0.002, 8.0)
    assert r("kgcoop", dataset="dtd").options.template == "a photo of a {}, a type of texture."


def test_no_dead_dg_blocks_and_a_user_dg_block_is_refused(tmp_path):
    configs = Path(__file__).resolve().parents[1] / "cpbench" / "configs" / "methods"
    for p in sorted(configs.glob("*.yaml")):
        data = yaml.safe_load(p.read_text()) or {}
        assert "dg" not in (data.get("protocols") or {}), f"{p.name}: protocols.dg is never read"
        for name, blk in (data.get("datasets") or {}).items():
            assert "dg" not in ((blk or {}).get("protocols") or {}), f"{p.name}: datasets.{name}.protocols.dg"
    user = tmp_path / "c.yaml"
    user.write_text("protocols:\n  dg:\n    train: {epochs: 3}\n")
    with pytest.raises(UserError, match="protocols.cross_dataset"):
        resolve("coop", CoOpOptions, "cross_dataset", config_file=user)


# ----------------------------------------------------------------------------- every block, in order
ALL_BLOCKS = {
    "train": {"epochs": 1, "lr": 0.01},
    "method": {"n_ctx": 2},
    "protocols": {"few_shot": {"train": {"epochs": 2}, "method": {"n_ctx": 3},
                               "shots": {4: {"train": {"epochs": 3}, "method": {"n_ctx": 5}}}}},
    "shots": {4: {"train": {"epochs": 4}, "method": {"n_ctx": 6}}},
    "datasets": {"dtd": {"train": {"epochs": 5}, "method": {"n_ctx": 7},
                         "protocols": {"few_shot": {"train": {"epochs": 6}, "method": {"n_ctx": 8},
                                                    "shots": {4: {"train": {"epochs": 7}, "method": {"n_ctx": 9}}}}},
                         "shots": {4: {"train": {"epochs": 8}, "method": {"n_ctx": 10}}}}},
}
# dropping the block that wins shows the one below it, down to the top-level train/method
ORDER = [(None, 8, 10), (("datasets", "dtd", "shots"), 7, 9),
         (("datasets", "dtd", "protocols", "few_shot", "shots"), 6, 8), (("datasets", "dtd", "protocols"), 5, 7), (("datasets",), 4, 6), (("shots",), 3, 5),
         (("protocols", "few_shot", "shots"), 2, 3), (("protocols",), 1, 2)]


def test_every_block_of_a_user_file_is_read_in_the_documented_order(tmp_path):
    user = copy.deepcopy(ALL_BLOCKS)
    for drop, epochs, n_ctx in ORDER:
        if drop:
            parent = user
            for key in drop[:-1]:
                parent = parent[key]
            del parent[drop[-1]]
        cfg = _resolve(tmp_path, user)
        assert (cfg.train.epochs, cfg.options.n_ctx, cfg.train.lr) == (epochs, n_ctx, 0.01), drop


def test_blocks_for_other_jobs_do_not_apply(tmp_path):
    assert _resolve(tmp_path, ALL_BLOCKS, protocol="base2new", shots=16).train.epochs == 5      # datasets.dtd
    assert _resolve(tmp_path, ALL_BLOCKS, protocol="base2new", shots=4).train.epochs == 8       # datasets.dtd.shots.4
    assert _resolve(tmp_path, ALL_BLOCKS, protocol="base2new", dataset="eurosat", shots=4).train.epochs == 4
    assert _resolve(tmp_path, ALL_BLOCKS, protocol="base2new", dataset="eurosat", shots=16).train.epochs == 1


def test_a_top_level_shots_block_applies_to_every_protocol(tmp_path):
    user = {"shots": {16: {"train": {"epochs": 3}}}}
    for protocol in ("base2new", "cross_dataset", "few_shot", "continual", "retrieval"):
        assert _resolve(tmp_path, user, protocol=protocol, shots=16).train.epochs == 3, protocol
    assert _resolve(tmp_path, user, protocol="base2new", shots=8).train.epochs == 200


def test_the_user_file_is_above_the_shipped_file_and_imported_settings(tmp_path):
    shipped = _resolve(tmp_path, None, shots=1)
    assert shipped.train.epochs == 50 and shipped.options.n_ctx == 16       # protocols.few_shot(.shots.1)
    assert _resolve(tmp_path, {"train": {"epochs": 7}}, shots=1).train.epochs == 7
    imported = {"train": {"epochs": 9, "lr": 0.5}, "method": {}}
    assert _resolve(tmp_path, None, shots=1, imported=imported).train.epochs == 9
    both = _resolve(tmp_path, {"train": {"epochs": 7}}, shots=1, imported=imported)
    assert (both.train.epochs, both.train.lr) == (7, 0.5)
    sets = resolve("coop", CoOpOptions, "few_shot", dataset="dtd", shots=1, sets=["epochs=11"],
                   config_file=(tmp_path / "user.yaml"))
    assert sets.train.epochs == 11


@pytest.mark.parametrize("text, needle", [
    ("trian: {epochs: 1}", "unknown section(s) trian; use train, method, protocols, shots, datasets"),
    ("protocols: {basetonew: {train: {epochs: 1}}}", "unknown protocol 'basetonew'"),
    ("protocols: {dg: {train: {epochs: 1}}}", "protocols.dg is never read"),
    ("datasets: {imagenet: {protocols: {dg: {train: {epochs: 1}}}}}", "protocols.dg is never read"),
    ("shots: {sixteen: {train: {epochs: 1}}}", "'sixteen' is not a shot count"),
    ("shots: {0: {train: {epochs: 1}}}", "0 is not a shot count"),
    ("protocols: {few_shot: {epochs: 5}}", "protocols.few_shot: unknown section(s) epochs"),
    ("shots: {1: {train: {epoch: 5}}}", "shots.1 train: unknown train setting(s) epoch"),
    ("datasets: {eurosat: {method: {n_ctxx: 2}}}", "datasets.eurosat method: unknown method option(s) n_ctxx"),
    ("datasets: {dtd: {datasets: {eurosat: {train: {epochs: 1}}}}}",
     "datasets.dtd: unknown section(s) datasets; use train, method, protocols, shots"),
    ("datasets: {dtd: {protocols: {few_shot: {shots: {1: {shots: {}}}}}}}",
     "datasets.dtd.protocols.few_shot.shots.1: unknown section(s) shots"),
    ("datasets: {imagenet: {shots: {x: {}}}}", "datasets.imagenet.shots: 'x' is not a shot count"),
    ("protocols: {few_shot: {shots: {1: {shots: {}}}}}", "protocols.few_shot.shots.1: unknown section(s) shots"),
    ("datasets: [dtd]", "datasets must be a mapping"),
    ("shots: {16: {train: [1]}}", "shots.16 train must be a mapping"),
])
def test_anything_else_is_refused_in_one_line_wherever_it_stands(text, needle, tmp_path):
    path = tmp_path / "user.yaml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(UserError) as exc:   # a block for other jobs (here base2new, 16 shots) is checked too
        resolve("coop", CoOpOptions, "base2new", dataset="dtd", shots=16, config_file=path)
    assert needle in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


# ----------------------------------------------------------------------------- through the CLI (toy world)
@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from cpbench.data import prepare as prep

    root = tmp_path_factory.mktemp("toy") / "data"
    prep.prepare("toy_shapes", root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("user, epochs", [
    ({"shots": {16: {"train": {"epochs": 1}}}}, 1),
    ({"datasets": {"toy_shapes": {"protocols": {"base2new": {"train": {"epochs": 2}}}}}}, 2),
])
def test_user_shots_and_dataset_protocol_blocks_train_what_they_say(user, epochs, toy_root, tmp_path, cli_here):
    """Issue 28's acceptance: before, both blocks were read and ignored (CoOp trained its 200)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(user), encoding="utf-8")
    code, out, err = cli_here("run", "coop", "--backbone", "toy", "--seeds", "1", "--dataset", "toy_shapes",
                              "--device", "cpu", "--root", str(toy_root), "--results", str(tmp_path / "res"),
                              "--config", str(cfg))
    assert code == 0, err
    rows = ResultStore(tmp_path / "res").read().frame
    assert sorted(rows["subset"]) == ["base", "new"] and set(rows["protocol"]) == {"base2new"}
    assert set(rows["epochs"]) == {epochs} and set(rows["shots"]) == {16}
