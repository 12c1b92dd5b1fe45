"""The authors' checkpoints through cpbench (issue 18): the golden cases' learnables, written in the
official checkpoint format (Dassl ``save_model``: ``{"state_dict", "epoch", "optimizer",
"scheduler", "val_result"}`` with the scheduler's pickled CosineAnnealingLR/SGD objects, under the
official folder layouts), imported through ``cpbench run --from-official``: the imported method's
logits equal the golden official logits; files that do not fit are refused in one line."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
import torch

from conftest import run_main
from golden_utils import (compare_logits, eval_logits, golden_backbone, golden_inputs, golden_weights,
                          learnable_values, load_case)

from cpbench.errors import UserError

# the bound: imported logits vs the golden official logits to 1e-5. cpbench's own fp32 path
# differs from the official code by fp32 round-off (observed 3.8e-6 .. 1.36e-5; IVLP L2 1.0e-5 and
# L9 1.36e-5 are over an absolute 1e-5), so the bound is 1e-5 relative to the largest golden logit
# (|logit| 3.2 .. 7.5). The import itself adds nothing: its logits are bit-equal to the golden
# test's path (set_learnables under the official names).
IMPORT_RTOL = 1e-5

MODULES = {"coop": "prompt_learner", "cocoop": "prompt_learner", "kgcoop": "prompt_learner", "pre": "prompt_learner",
           "coop_lamm": "prompt_learner", "coopvpt": "prompt_learner", "maple": "MultiModalPromptLearner",
           "ivlp": "VLPromptLearner", "promptsrc": "VLPromptLearner", "prograd": "prompt_learner",
           "clip_adapter": "clip_adapter"}
CASES = {"coop_L2": "coop", "cocoop_L2": "cocoop", "kgcoop_L2": "kgcoop", "pre_L2": "pre", "lamm_L2": "coop_lamm",
         "bpl_L2": "coopvpt", "maple_L2": "maple", "maple_L9": "maple", "ivlp_L2": "ivlp", "ivlp_L9": "ivlp",
         "promptsrc_L2": "promptsrc", "promptsrc_L9": "promptsrc", "prograd_L2": "prograd",
         "clip_adapter_L2": "clip_adapter"}


# ----------------------------------------------------------------------------- official files
def trainer_state(epoch: int, tensors: list[torch.Tensor]) -> dict:
    """What Dassl's save_model stores besides the weights: the optimizer's state dict and the
    ConstantWarmupScheduler's state dict, whose ``successor`` is the CosineAnnealingLR OBJECT
    (holding the SGD object): globals that weights_only refuses."""
    params = [torch.nn.Parameter(t.detach().clone()) for t in tensors]
    opt = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epoch)
    sched = {"successor": cosine, "warmup_epoch": 1, "cons_lr": 1e-5, "base_lrs": [0.002], "last_epoch": epoch,
             "_step_count": epoch + 1, "verbose": False, "_get_lr_called_within_step": False, "_last_lr": [0.0]}
    return {"epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched, "val_result": None}


def official_state_dict(case, method_name: str, method) -> collections.OrderedDict:
    """The state_dict the official trainer registers for this case, keys as the official code names
    them: learnables (seeded golden values), plus what load_model deletes and frozen weights."""
    values = learnable_values(case)
    g = torch.Generator().manual_seed(0)
    n_cls = len(case["inputs"]["classnames"])
    sd = collections.OrderedDict()
    if MODULES[method_name] == "clip_adapter":   # CustomCLIP.adapter's own state dict
        return collections.OrderedDict((k[len("adapter."):], v) for k, v in values.items())
    if MODULES[method_name] == "prompt_learner":
        for k, v in values.items():
            sd[k[len("prompt_learner."):]] = v
        sd["token_prefix"] = torch.randn(n_cls, 1, 512, generator=g)
        sd["token_suffix"] = torch.randn(n_cls, 72, 512, generator=g)
        if method_name == "coop_lamm":   # the frozen copy of the constructor value, and the test suffix
            sd["fix_token"] = method.fix_token.detach().clone()
            sd["token_suffix_test"] = torch.randn(n_cls, 72, 512, generator=g)
        if method_name == "kgcoop":      # created by the official prompt learner, frozen, unused
            sd["bias_vectors"] = torch.randn(1, 512, generator=g)
            sd["meta_net.linear1.weight"] = torch.randn(32, 512, generator=g)
    else:                                # the whole CustomCLIP: frozen CLIP keys around the prompts
        sd["logit_scale"] = torch.tensor(4.6)
        sd["image_encoder.conv1.weight"] = torch.randn(768, 3, 16, 16, generator=g)
        sd["text_encoder.positional_embedding"] = torch.randn(77, 512, generator=g)
        sd.update(values)
        sd["prompt_learner.token_prefix"] = torch.randn(n_cls, 1, 512, generator=g)
        sd["prompt_learner.token_suffix"] = torch.randn(n_cls, 72, 512, generator=g)
        if method_name == "promptsrc":
            sd["prompt_learner.ZS_image_encoder.proj"] = torch.randn(768, 512, generator=g)
    return sd


def write_official(folder: Path, sd: dict, epoch: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model.pth.tar-{epoch}"
    torch.save({"state_dict": sd, **trainer_state(epoch, list(sd.values())[:2])}, path)
    (folder / "checkpoint").write_text(f"{path.name}\n")
    return path


def build(case_name: str):
    """(cpbench method on the golden backbone with the case's official config, method name)."""
    from golden_methods import build_method

    case = load_case(case_name)
    name = CASES[case_name]
    _, _, classnames = golden_inputs(case)
    bb = golden_backbone(case)
    if name == "coop":
        from cpbench.methods.coop import CoOp, CoOpOptions

        return CoOp(bb, classnames, CoOpOptions(n_ctx=4, ctx_init="")), name
    if name == "coop_lamm":
        from cpbench.methods.lamm import CoOpLAMM, CoOpLAMMOptions

        return CoOpLAMM(bb, classnames, CoOpLAMMOptions(n_ctx=16, ctx_init="a photo of a")), name
    if name == "pre":
        from cpbench.methods.pre import PRE, PREOptions

        return PRE(bb, classnames, PREOptions(n_ctx=4, ctx_init="a photo of a")), name
    if name == "coopvpt":
        from cpbench.methods.bpl import BPLOptions, CoOpVPT

        return CoOpVPT(bb, classnames, BPLOptions(n_ctx=4, ctx_init="a photo of a", mc_samples=10)), name
    if name == "prograd":
        from golden_methods import prograd_method

        return prograd_method(case), name
    if name == "clip_adapter":
        from cpbench.methods.clip_adapter import CLIPAdapter, CLIPAdapterOptions

        return CLIPAdapter(bb, classnames, CLIPAdapterOptions(template="a photo of a {}.")), name
    return build_method(name, case)[0], name


class _Job:
    def __init__(self, method, dataset="caltech101", seed=1, shots=16, subset="base"):
        self.method, self.train_dataset, self.seed, self.shots, self.train_subset = method, dataset, seed, shots, subset


def assert_golden(logits, case):
    ref = torch.tensor(case["eval"]["logits"], dtype=torch.float64)
    gap = compare_logits(logits, case)["logits"]
    assert gap <= IMPORT_RTOL * max(1.0, float(ref.abs().max())), gap
    return gap


# ----------------------------------------------------------------------------- import == golden
@pytest.mark.parametrize("case_name", sorted(CASES))
def test_official_file_imports_to_the_golden_logits(case_name, tmp_path):
    from cpbench.state import official as oc
    from golden_utils import set_learnables
    from golden_methods import COCOOP_MAP, build_method

    case = load_case(case_name)
    method, name = build(case_name)
    images, _, _ = golden_inputs(case)
    # the two official layouts: a released zip (<dataset>/base/seed<k>/) and the training scripts'
    if case_name.endswith("L2"):
        folder = tmp_path / "weights" / "caltech101" / "base" / "seed1" / MODULES[name]
    else:
        folder = (tmp_path / "weights" / "base2new" / "train_base" / "caltech101" / "shots_16" / "T" / "cfg"
                  / "seed1" / MODULES[name])
    write_official(folder, official_state_dict(case, name, method), epoch=5)
    write_official(folder, {"ctx": torch.zeros(1)}, epoch=2)        # an earlier epoch: not the one taken
    job = _Job(name)
    oc.check(str(tmp_path / "weights"), None, [job], None)
    method.load_learned_state(oc.load_state(str(tmp_path / "weights"), job, method, None))
    got = eval_logits(method, images, case)
    assert_golden(got, case)
    # exactly the golden test's path (set_learnables with the official names)
    ref_method, _ = build(case_name)
    from golden_methods import ADAPTER_MAP, PROGRAD_MAP

    maps = {"coop": {"prompt_learner.ctx": "ctx"}, "cocoop": COCOOP_MAP, "prograd": PROGRAD_MAP,
            "clip_adapter": ADAPTER_MAP}
    name_map = maps.get(name) or (build_method(name, case)[1] if name in ("maple", "ivlp", "promptsrc", "kgcoop")
                                  else None)
    if name_map is not None:
        set_learnables(ref_method, case, name_map)
        assert torch.equal(eval_logits(ref_method, images, case), got)


def test_weights_only_refuses_a_file_with_code(tmp_path):
    from cpbench.state import official as oc

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "dtd" / "base" / "seed1" / "prompt_learner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {"ctx": torch.zeros(4, 512)}, "epoch": 1, "val_result": Payload()},
               folder / "model.pth.tar-1")
    with pytest.raises(UserError, match="print.*never unpickles code"):
        oc.read_state_dict(folder / "model.pth.tar-1")


def test_a_file_that_does_not_fit_is_refused_naming_the_keys(tmp_path):
    from cpbench.state import official as oc

    case = load_case("ivlp_L2")
    method, name = build("ivlp_L2")
    sd = official_state_dict(case, name, method)
    folder = tmp_path / "caltech101" / "base" / "seed1" / "VLPromptLearner"
    write_official(folder, sd, 5)
    job = _Job("ivlp")
    # another config (4+4 prompts, cpbench's ivlp.yaml): shapes named
    from cpbench.methods.ivlp import IVLP, IVLPOptions

    other = IVLP(golden_backbone(case), golden_inputs(case)[2], IVLPOptions())
    with pytest.raises(UserError, match=r"prompt_learner\.ctx is \(2, 512\) in the file, \(4, 512\) here"):
        oc.load_state(str(tmp_path), job, other, None)
    # a prompt missing, an unknown learnable-looking key
    del sd["image_encoder.transformer.resblocks.1.VPT_shallow"]
    sd["prompt_learner.meta_net.linear1.weight"] = torch.zeros(2, 2)
    write_official(folder, sd, 5)
    with pytest.raises(UserError) as err:
        oc.load_state(str(tmp_path), job, method, None)
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing image_encoder.transformer.resblocks.1.VPT_shallow" in msg
    assert "unexpected prompt_learner.meta_net.linear1.weight" in msg
    # a CoOp file imported as CoCoOp fails the early check (before any backbone would load)
    coop_folder = tmp_path / "c" / "caltech101" / "base" / "seed1" / "prompt_learner"
    write_official(coop_folder, {"ctx": torch.zeros(4, 512), "token_prefix": torch.zeros(5, 1, 512)}, 10)
    with pytest.raises(UserError, match="missing prompt_learner.meta_net.linear1.weight"):
        oc.check(str(tmp_path / "c"), None, [_Job("cocoop")], None)


def test_finding_the_file_of_a_job(tmp_path):
    from cpbench.state import official as oc

    sd = {"ctx": torch.zeros(2, 2)}
    for rel in ("dtd/base/seed1", "dtd/novel/seed1", "dtd/base/seed2", "imagenet/seed1",
                "base2new/train_base/eurosat/shots_16/CoOp/cfg/seed1", "base2new/train_base/eurosat/shots_4/CoOp/cfg/seed1"):
        write_official(tmp_path / rel / "prompt_learner", sd, 10)
    find = lambda *a: oc.find_checkpoint(tmp_path, "coop", *a).relative_to(tmp_path).parent.parent.as_posix()  # noqa: E731
    assert find("dtd", 1, 16, "base") == "dtd/base/seed1"
    assert find("dtd", 2, 16, "base") == "dtd/base/seed2"
    assert find("imagenet", 1, 16, "all") == "imagenet/seed1"
    assert find("eurosat", 1, 16, "base") == "base2new/train_base/eurosat/shots_16/CoOp/cfg/seed1"
    assert find("eurosat", 1, 4, "base") == "base2new/train_base/eurosat/shots_4/CoOp/cfg/seed1"
    with pytest.raises(UserError, match="no official coop checkpoint for dtd .* seed 3"):
        find("dtd", 3, 16, "base")
    with pytest.raises(UserError, match="not under base"):            # a base-class file for an all-class job
        find("dtd", 1, 16, "all")
    with pytest.raises(UserError, match="no official checkpoint format"):
        oc.find_checkpoint(tmp_path, "zeroshot", "dtd", 1, 16, "base")
    # the identity is the files' content, not where they are
    a = oc.identity(str(tmp_path))
    import shutil

    shutil.copytree(tmp_path, tmp_path.parent / "moved")
    assert oc.identity(str(tmp_path.parent / "moved")) == a
    write_official(tmp_path / "dtd" / "base" / "seed1" / "prompt_learner", {"ctx": torch.ones(2, 2)}, 10)
    assert oc.identity(str(tmp_path)) != a


# ----------------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def golden_world(tmp_path_factory):
    """A local-dir backbone holding the golden case-A CLIP, and a prepared miniature caltech101 of
    10 classes whose first 5 (the base classes) are the golden class names, in order."""
    from safetensors.torch import save_file

    from minidata import make_caltech

    base = tmp_path_factory.mktemp("golden_world")
    case = load_case("coop_L2")
    w = case.weights
    bb = base / "golden_clip"
    bb.mkdir()
    cfg = {"model_cfg": {"embed_dim": 512, "quick_gelu": True,
                         "vision_cfg": {"image_size": w["image_size"], "layers": w["vision_layers"], "width": 768,
                                        "patch_size": 16},
                         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8,
                                      "layers": w["text_layers"]}}}
    (bb / "open_clip_config.json").write_text(json.dumps(cfg))
    sd = golden_weights(w["vision_layers"], w["text_layers"], w["image_size"], w["base_seed"])
    save_file({k: v.half().contiguous() for k, v in sd.items()}, str(bb / "open_clip_model.safetensors"))
    classes = tuple(case["inputs"]["classnames"]) + ("tree frog", "canoe", "bagel", "kite", "lynx")
    make_caltech(base / "data", n_train=2, n_val=1, n_test=1, classes=classes)
    return base


_cli = run_main


CLI_CASES = [("coop_L2", ()), ("cocoop_L2", ()), ("maple_L2", ()), ("promptsrc_L2", ()), ("lamm_L2", ()),
             ("ivlp_L2", ("--set", "method.n_ctx_text=2", "method.n_ctx_vision=2")), ("prograd_L2", ()),
             ("clip_adapter_L2", ())]


@pytest.mark.slow
@pytest.mark.parametrize("case_name,extra", CLI_CASES)
def test_cli_imports_official_checkpoints_to_the_golden_logits(case_name, extra, golden_world, tmp_path, monkeypatch):
    from cpbench.protocols import execute
    from cpbench.results.store import ResultStore

    case = load_case(case_name)
    method, name = build(case_name)
    weights = tmp_path / "official" / "base2new"
    write_official(weights / "caltech101" / "base" / "seed1" / MODULES[name],
                   official_state_dict(case, name, method), epoch=5)
    images, _, classnames = golden_inputs(case)
    seen = {}
    real = execute.evaluate

    def capture(scorer, items, *a, **k):   # the imported method, on the base (= golden) classes
        if list(scorer.classnames) == classnames:
            seen["logits"] = eval_logits(scorer, images, case)
        return real(scorer, items, *a, **k)

    monkeypatch.setattr(execute, "evaluate", capture)
    res = tmp_path / "res"
    args = ["run", name, "--dataset", "caltech101", "--seeds", "1", "--shots", "16", "--backbone",
            f"local-dir:{golden_world / 'golden_clip'}", "--pretrained", "none", "--root", golden_world / "data",
            "--results", res, "--device", "cpu", "--from-official", weights, *extra]
    assert _cli(monkeypatch, *args) == 0
    gap = assert_golden(seen["logits"], case)
    df = ResultStore(res).read().frame
    assert sorted(df.subset) == ["base", "new"] and (df.epochs == 0).all() and (df.train_seconds == 0).all()
    assert df.imported.str.fullmatch(r"official:[0-9a-f]{16}").all() and df.imported.nunique() == 1
    print(f"{case_name}: max |logit - golden| = {gap:.2e}")


@pytest.mark.slow
def test_cli_refuses_before_loading_the_backbone(golden_world, tmp_path, monkeypatch, capsys):
    from cpbench.models import backbone

    monkeypatch.setattr(backbone, "load_backbone", lambda *a, **k: pytest.fail("backbone loaded"))
    common = ["--dataset", "caltech101", "--seeds", "1", "--backbone", "tiny", "--pretrained", "none",
              "--root", golden_world / "data", "--results", tmp_path / "res", "--device", "cpu"]
    assert _cli(monkeypatch, "run", "coop", *common, "--from-official", tmp_path / "nowhere") == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _cli(monkeypatch, "run", "coop", *common, "--from-official", tmp_path / "empty") == 2
    assert "no official coop checkpoint for caltech101" in capsys.readouterr().err
    assert _cli(monkeypatch, "run", "zeroshot", *common, "--from-official", tmp_path / "empty") == 2
    assert not (tmp_path / "res").exists()
