"""Issue 19's acceptance on the toy world: CoOp, MaPLe and Bayesian PL (coopvpt) trained for 2
epochs on 2 shots of toy_shapes (a smaller copy: 8 test images per class), exported with
``cpbench export``, and each loaded with ``cpbench.load`` in a fresh process: the logits on the
test split (base classes, and the new classes with the seed their evaluation used) equal the ones
the evaluation computed, to 1e-6 in fp32, and the accuracy equals the row's. A CoOp export's text
features, used with plain open_clip in a process that never imports cpbench, give the row's
accuracy."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from evalcapture import capture_evaluations  # noqa: E402

from cpbench.data import prepare as prep  # noqa: E402
from cpbench.data.toy import datasets as toy  # noqa: E402
from cpbench.models.backbone import TOY_DIR  # noqa: E402
from cpbench.data.prepare import subset_items  # noqa: E402
from cpbench.runner import RunRequest, execute  # noqa: E402

pytestmark = pytest.mark.slow

LOAD = """
import json, sys
from safetensors.torch import save_file
import cpbench

export, spec_path, out = sys.argv[1:4]
spec = json.load(open(spec_path))
clf = cpbench.load(export, device="cpu")
new = clf.with_classes(spec["new_names"])
new.sample_seed = clf.meta["job"]["targets"][1]["rng_seed"]
save_file({"base": clf.logits(spec["base"]), "new": new.logits(spec["new"])}, out)
"""

PLAIN_OPEN_CLIP = """
import json, sys
import open_clip, torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torchvision import transforms as T

export, toy_dir, spec_path = sys.argv[1:4]
with safe_open(export, framework="pt") as fh:
    meta = json.loads(fh.metadata()["cpbench.meta"])
    text, scale = fh.get_tensor("text_features"), fh.get_tensor("logit_scale")
cfg = json.load(open(f"{toy_dir}/toy_clip.json"))
model = open_clip.model.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"],
                             quick_gelu=meta["backbone"]["quick_gelu"])
model.load_state_dict({k: v.float() for k, v in load_file(f"{toy_dir}/toy_clip.safetensors").items()})
model.eval()
p = meta["preprocess"]
pre = T.Compose([T.Resize(p["image_size"], interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(p["image_size"]),
                 T.ToTensor(), T.Normalize(p["mean"], p["std"])])
spec = json.load(open(spec_path))
with torch.no_grad():
    images = torch.stack([pre(Image.open(path).convert("RGB")) for path in spec["base"]])
    logits = scale * model.encode_image(images, normalize=True) @ text.T
correct = int((logits.argmax(dim=-1) == torch.tensor(spec["base_labels"])).sum())
assert not [m for m in sys.modules if m == "cpbench" or m.startswith("cpbench.")]
print(json.dumps({"correct": correct, "n": len(spec["base"]), "classnames": meta["classnames"]}))
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("toyexport")
    with pytest.MonkeyPatch.context() as mp:
        small = dataclasses.replace(toy.TOY_DATASETS["toy_shapes"], n_train=4, n_val=2, n_test=8)
        mp.setitem(toy.TOY_DATASETS, "toy_shapes", small)
        ds, _ = prep.prepare("toy_shapes", root / "data", shots=[2], seeds=[1])
        trained = {}
        got = capture_evaluations(mp)
        for method in ("coop", "maple", "coopvpt"):
            req = RunRequest(method=method, datasets=["toy_shapes"], seeds=[1], shots=[2], backbone="toy",
                             sets=["epochs=2"], root=root / "data", results=root / "results", device="cpu")
            first = len(got)
            rows = execute(req, Console(quiet=True), Console(quiet=True))
            trained[method] = (rows, got[first:])
    spec = {}
    for subset in ("base", "new"):
        items, names, _ = subset_items(ds, subset, 0, 1, "test")
        spec[subset] = [str(ds.image_root / it.path) for it in items]
        spec[f"{subset}_labels"] = [it.label for it in items]
        spec[f"{subset}_names"] = list(names)
    (root / "spec.json").write_text(json.dumps(spec))
    return root, trained, spec


def _export(root: Path, method: str, cli_here) -> Path:
    """``cpbench export`` (its CLI, in this process: only the loading needs a fresh one)."""
    out = root / f"{method}.safetensors"
    code, _, err = cli_here("export", method, "--dataset", "toy_shapes", "--seed", "1", "--out", out,
                            "--root", root / "data", "--results", root / "results")
    assert code == 0 and f"wrote {out}" in err, err
    return out


@pytest.mark.parametrize("method", ["coop", "maple", "coopvpt"])
def test_an_export_loaded_in_a_fresh_process_gives_the_evaluations_logits(world, method, cli_here):
    root, trained, spec = world
    rows, got = trained[method]
    out = _export(root, method, cli_here)
    logits_file = root / f"{method}-logits.safetensors"
    proc = subprocess.run([sys.executable, "-c", LOAD, str(out), str(root / "spec.json"), str(logits_file)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    fresh = load_file(str(logits_file))
    for i, subset in enumerate(("base", "new")):
        assert rows[i]["subset"] == subset and len(got[i]["items"]) == len(spec[subset])
        torch.testing.assert_close(fresh[subset], got[i]["logits"], rtol=0, atol=1e-6)
        correct = int((fresh[subset].argmax(dim=-1) == torch.tensor(spec[f"{subset}_labels"])).sum())
        assert 100.0 * correct / len(spec[subset]) == rows[i]["accuracy"]


def test_a_coop_exports_text_features_work_in_plain_open_clip(world, cli_here):
    root, trained, spec = world
    out = root / "coop.safetensors"
    if not out.exists():
        _export(root, "coop", cli_here)
    proc = subprocess.run([sys.executable, "-c", PLAIN_OPEN_CLIP, str(out), str(TOY_DIR), str(root / "spec.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["classnames"] == spec["base_names"]
    assert 100.0 * res["correct"] / res["n"] == trained["coop"][0][0]["accuracy"]
