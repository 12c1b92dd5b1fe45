"""The GPU benchmark: one command, one GPU, under 8 minutes, no network, ViT-B/16 random weights.

    python benchmarks/speed/gpu.py --out benchmarks/speed/results-gpu.jsonl
    python benchmarks/speed/gpu.py --dry-run          # tiny CPU run of every section (the tests)

Prints JSON lines (the first names the GPU) and writes them to ``--out``. Sections, each timed
side by side in this process:

- ``roofline``: measured dense matmul FLOP/s (8192^3) per precision: the ceiling every other
  figure is set beside.
- ``train_step``: images/s of training steps (official batch sizes: CoOp 32, CoCoOp 1, MaPLe 4,
  PromptSRC 4) for CoOp (16 and 4 context tokens; 100 and 1000 classes), CoCoOp, MaPLe and
  PromptSRC (100 classes), in ``fp16`` (CLIP and prompts in half, the papers) and ``bf16``
  (autocast), text modes ``naive`` (77 tokens, the official repos), ``cut`` and ``shared``
  (cpbench) interleaved; peak GPU memory; FLOPs per step; the roofline images/s.
- ``eval``: frozen image-encoder images/s at batch 256 (fp16, bf16, fp32), no_grad vs
  inference_mode, channels-last, and (time allowing) torch.compile with its compile time.
- ``loader``: a cold evaluation from JPEG files (synthetic 500x375 images written to a temp dir):
  decode images/s with 0..N workers, and cpbench's evaluation end to end (``eval_workers``).
- ``jobs_per_gpu``: jobs/hour of the local launcher with 1, 2, 4 workers on this GPU (toy world,
  prepared into a temp dir when ``--root`` has none).
- ``views``: a text-side method's training (CoOp, 100 classes, batch 32, 2 epochs over 1024
  synthetic 500x375 JPEGs, fp16) through cpbench's own loop, three ways: with no store (each
  epoch: decode + keyed augmentation in ``eval_workers`` loader workers + the frozen encoder's
  canonical pass, then the text-side steps), filling the training-view store (the same, plus
  writing each epoch's shard), and reading the store (one shard per epoch from disk + the
  steps). Training images/s of each, the ratio, the store's bytes, and whether the learned
  states are bit-identical (the store's claim, checked on this GPU).

FLOP count (stated in each row): forward FLOPs of a transformer layer over T query tokens with K
key tokens are 24*T*D^2 (QKV, output projection, 4x MLP; 2 FLOPs per multiply-add) + 4*T*K*D
(scores and weighted sum, masked entries counted); the patch embedding adds 2*196*3*16*16*D.
Frozen weights need no weight gradients, so a backward pass costs 1x the forward's linear FLOPs
and 2x its attention FLOPs. A step counts the image forward (plus its backward when prompts
enter the image encoder: MaPLe, PromptSRC; plus PromptSRC's frozen forward), the text forward
and backward; losses, LayerNorms, activations and prompt networks are left out. The roofline
images/s divides the measured matmul FLOP/s by the FLOPs of the ``shared`` mode (the least work
that gives the same result), so every mode is set beside the same ceiling.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (MODES, Recorder, class_names, coop_options, loadavg, machine, median, set_text_mode,  # noqa: E402
                    sgd, sync, timed, train_step)

CONTEXT = 77


# ------------------------------------------------------------------------------------ FLOPs
def layer_flops(tokens: int, keys: int, width: int, backward: bool = False) -> tuple[float, float]:
    """(linear, attention) FLOPs of one transformer layer."""
    lin, att = 24.0 * tokens * width ** 2, 4.0 * tokens * keys * width
    return (lin, 2 * att) if backward else (lin, att)


def tower_flops(tokens: int, keys: int, width: int, layers: int, backward: bool = False) -> float:
    return layers * sum(layer_flops(tokens, keys, width, backward))


def text_flops(backbone, eot: list[int], groups: int, shared: int, mode: str, backward: bool) -> float:
    """FLOPs of one text pass over ``groups`` x len(eot) prompts in ``mode``."""
    d, n = backbone.text_width, backbone.text_layers
    if mode == "shared":
        total = tower_flops(shared, shared, d, n, backward)
        total += sum(tower_flops(e - shared + 1, e + 1, d, n, backward) for e in eot)
        return groups * total
    length = CONTEXT if mode == "naive" else max(eot) + 1
    return groups * len(eot) * tower_flops(length, length, d, n, backward)


def image_flops(backbone, extra_tokens: int = 0, backward: bool = False) -> float:
    v = backbone.clip.visual
    size = backbone.preprocess.image_size
    patch = v.conv1.kernel_size[0]
    d = backbone.vision_width
    t = (size // patch) ** 2 + 1 + extra_tokens
    layers = backbone.vision_layers
    patches = 2.0 * (size // patch) ** 2 * 3 * patch * patch * d
    return tower_flops(t, t, d, layers, backward) + (0 if backward else patches)


def step_flops(name: str, method, backbone, batch: int, mode: str) -> float:
    p = method.prompts
    eot = [int(e) for e in p.eot.tolist()]
    shared = method.shared_prefix() if hasattr(method, "shared_prefix") else p.shared
    img = image_flops(backbone)
    if name in ("coop", "cocoop"):
        groups = batch if name == "cocoop" else 1
        return batch * img + sum(text_flops(backbone, eot, groups, shared, mode, bw) for bw in (False, True))
    extra = 2 if name == "maple" else getattr(method.options, "n_ctx_vision", 0)
    prompted = image_flops(backbone, extra) + image_flops(backbone, extra, backward=True)
    frozen = img if name == "promptsrc" else 0.0
    return batch * (prompted + frozen) + sum(text_flops(backbone, eot, 1, shared, mode, bw) for bw in (False, True))


# ------------------------------------------------------------------------------------ sections
def matmul_roofline(device, dry: bool) -> dict[str, float]:
    """Measured dense matmul FLOP/s per precision name (fp16, bf16, fp32)."""
    n = 256 if dry else 8192
    out = {}
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)):
        if device.type == "cpu" and dtype == torch.float16:
            dtype = torch.float32
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        reps = 3 if dry else 20
        dt = timed(lambda: [a @ b for _ in range(reps)], device)
        out[name] = 2.0 * n ** 3 * reps / dt
    return out


def build_method(name: str, backbone, n_classes: int, n_ctx: int | None, precision, device):
    from cpbench.config import resolve
    from cpbench.methods.registry import get_method_class

    cls = get_method_class(name)
    options = coop_options(n_ctx) if name == "coop" else resolve(name, cls.Options).options
    torch.manual_seed(0)
    return cls(backbone, class_names(n_classes), options).to(device=device, dtype=precision.param_dtype)


def bench_train(rec, backbone, device, roof, args, budget):
    from cpbench.engine.precision import resolve_precision

    configs = [("coop", c, k, 32) for k in (16, 4) for c in args.coop_classes]
    configs += [("cocoop", args.classes, None, 1), ("maple", args.classes, None, 4), ("promptsrc", args.classes, None, 4)]
    for precision_name in args.precisions:
        precision = resolve_precision(precision_name, device)
        bb = backbone.to(dtype=precision.param_dtype)
        for name, n_classes, n_ctx, batch in configs:
            if budget.over():
                rec({"bench": "train_step", "method": name, "classes": n_classes, "skipped": "time budget"})
                continue
            method = build_method(name, bb, n_classes, n_ctx, precision, device)
            method.train()
            opt = sgd(method)
            size = bb.preprocess.image_size
            images = torch.randn(batch, 3, size, size, device=device, dtype=precision.param_dtype)
            labels = torch.randint(0, n_classes, (batch,), device=device)
            times, peaks = {m: [] for m in MODES}, {}
            for r in range(args.rounds + 1):
                for mode in MODES:
                    set_text_mode(bb, mode)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    dt = timed(lambda: [train_step(method, precision, device, images=images, labels=labels, opt=opt)
                                        for _ in range(args.steps)], device) / args.steps
                    if r:
                        times[mode].append(dt)
                    if device.type == "cuda":
                        peaks[mode] = torch.cuda.max_memory_allocated() / 2**20
            set_text_mode(bb, "shared")
            need = step_flops(name, method, bb, batch, "shared")
            ceiling = roof[precision.effective if precision.effective in roof else "fp32"]
            row = {"bench": "train_step", "method": name, "classes": n_classes, "n_ctx": n_ctx, "batch": batch,
                   "precision": precision.effective, "steps": args.steps, "rounds": args.rounds,
                   "flops_per_step_shared": need, "roofline_images_per_s": round(batch * ceiling / need, 1)}
            for mode in MODES:
                t = median(times[mode])
                row[mode] = {"s_per_step": round(t, 5), "images_per_s": round(batch / t, 2),
                             "flops_per_step": step_flops(name, method, bb, batch, mode),
                             "fraction_of_roofline": round((batch / t) / row["roofline_images_per_s"], 4),
                             "peak_mib": round(peaks[mode], 1) if mode in peaks else None}
            row["speedup_shared_vs_naive"] = round(row["naive"]["s_per_step"] / row["shared"]["s_per_step"], 2)
            row["speedup_shared_vs_cut"] = round(row["cut"]["s_per_step"] / row["shared"]["s_per_step"], 2)
            rec(row)
            del method, opt
            if device.type == "cuda":
                torch.cuda.empty_cache()
    backbone.to(dtype=torch.float32)


def bench_eval(rec, backbone, device, roof, args, budget):
    from cpbench.engine.precision import resolve_precision

    batch = 8 if args.dry_run else 256
    size = backbone.preprocess.image_size
    flops = image_flops(backbone)
    reps = 2 if args.dry_run else 10

    def measure(fn, x):
        with torch.no_grad():
            fn(x)
        return median([timed(lambda: fn(x), device) for _ in range(reps)])

    for precision_name in dict.fromkeys([*args.precisions, "fp32"]):
        precision = resolve_precision(precision_name, device)
        bb = backbone.to(dtype=precision.param_dtype)
        x = torch.randn(batch, 3, size, size, device=device, dtype=precision.param_dtype)
        enc = bb.image

        def plain(t):
            with torch.no_grad(), precision.autocast(device):
                return enc(t)

        def inference(t):
            with torch.inference_mode(), precision.autocast(device):
                return enc(t)

        variants = {"no_grad": (plain, x), "inference_mode": (inference, x)}
        ceiling = roof[precision.effective if precision.effective in roof else "fp32"]
        row = {"bench": "eval", "precision": precision.effective, "batch": batch, "flops_per_image": flops,
               "roofline_images_per_s": round(ceiling / flops, 1)}
        for key, (fn, inp) in variants.items():
            t = measure(fn, inp)
            row[key] = {"images_per_s": round(batch / t, 1), "fraction_of_roofline": round(batch / t / (ceiling / flops), 4)}
        bb.clip.visual.to(memory_format=torch.channels_last)
        t = measure(plain, x.contiguous(memory_format=torch.channels_last))
        row["channels_last"] = {"images_per_s": round(batch / t, 1)}
        bb.clip.visual.to(memory_format=torch.contiguous_format)
        if not args.dry_run and device.type == "cuda" and not budget.over(reserve=120) and precision_name == "fp16":
            t0 = time.perf_counter()
            compiled = torch.compile(enc)
            with torch.no_grad():
                ref, got = enc(x), compiled(x)
            row["compile"] = {"compile_s": round(time.perf_counter() - t0, 1),
                              "max_abs_diff_vs_eager": float((got.float() - ref.float()).abs().max()),
                              "images_per_s": round(batch / measure(lambda t: compiled(t), x), 1)}
        rec(row)
    backbone.to(dtype=torch.float32)


def write_jpegs(folder: Path, n: int, dry: bool, classes: int = 10) -> list:
    import numpy as np
    from PIL import Image

    from cpbench.data.splits import Item

    rng = np.random.default_rng(0)
    items = []
    w, h = (64, 48) if dry else (500, 375)
    for i in range(n):
        base = np.linspace(0, 255, w)[None, :, None] * rng.random((1, 1, 3)) + np.linspace(0, 255, h)[:, None, None] * rng.random((1, 1, 3))
        arr = np.clip(base / 2 + rng.normal(0, 20, (h, w, 3)), 0, 255).astype("uint8")
        Image.fromarray(arr).save(folder / f"{i}.jpg", quality=90)
        items.append(Item(f"{i}.jpg", i % classes, f"class {i % classes}"))
    return items


def bench_loader(rec, backbone, device, args, budget):
    import os

    from torch.utils.data import DataLoader

    from cpbench.data.images import ImageList, test_pixels, test_transform
    from cpbench.engine.features import encode_all, eval_workers
    from cpbench.engine.precision import resolve_precision
    from cpbench.methods.zeroshot import ZeroShotCLIP, ZeroShotOptions

    folder = Path(tempfile.mkdtemp(prefix="cpbench-jpegs-"))
    try:
        n = 16 if args.dry_run else 1024
        items = write_jpegs(folder, n, args.dry_run)
        cpus = os.cpu_count() or 1
        for workers in sorted({0, 4, 8, max(1, cpus - 1)} if not args.dry_run else {0, 1}):
            for name, tf in (("float_per_image", test_transform), ("uint8_pixels", test_pixels)):
                dl = DataLoader(ImageList(items, folder, tf(backbone.preprocess)), batch_size=64, num_workers=workers,
                                prefetch_factor=4 if workers else None)
                t0 = time.perf_counter()
                for _ in dl:
                    pass
                rec({"bench": "loader", "pipeline": name, "workers": workers, "images": n,
                     "images_per_s": round(n / (time.perf_counter() - t0), 1)})
        precision = resolve_precision("fp16", device)
        bb = backbone.to(dtype=precision.param_dtype)
        method = ZeroShotCLIP(bb, [f"class {i}" for i in range(10)], ZeroShotOptions(template="a photo of a {}."))
        auto = eval_workers(0, device)
        for workers in sorted({0, auto}):
            t0 = time.perf_counter()
            encode_all(method, items, folder, device, precision, 8 if args.dry_run else 256, workers)
            sync(device)
            rec({"bench": "cold_eval_jpeg", "precision": precision.effective, "workers": workers,
                 "eval_workers_default": auto, "images": n, "images_per_s": round(n / (time.perf_counter() - t0), 1)})
        backbone.to(dtype=torch.float32)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bench_jobs(rec, args, budget):
    from jobs_per_gpu import jobs_per_hour

    from cpbench.data import prepare as prep

    root = args.root
    tmp = None
    if not (root / "toy_shapes").exists():
        tmp = Path(tempfile.mkdtemp(prefix="cpbench-toy-"))
        prep.prepare("toy_shapes", tmp)
        root = tmp
    try:
        base = None
        for n in (1, 2, 4):
            if budget.over(reserve=60):
                rec({"bench": "jobs_per_gpu", "workers_per_gpu": n, "skipped": "time budget"})
                continue
            row = jobs_per_hour(root, "0" if torch.cuda.is_available() else "cpu", n, args.jobs, args.job_epochs)
            base = base or row["jobs_per_hour"]
            rec({**row, "vs_one_worker": round(row["jobs_per_hour"] / base, 2) if base else None})
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def bench_views(rec, backbone, device, args, budget):
    from cpbench.config import TrainConfig
    from cpbench.engine.features import eval_workers
    from cpbench.engine.precision import resolve_precision
    from cpbench.engine.train import train
    from cpbench.engine.views import ViewStore

    if budget.over(reserve=60):
        rec({"bench": "views", "skipped": "time budget"})
        return
    folder = Path(tempfile.mkdtemp(prefix="cpbench-views-"))
    try:
        n, classes = (16, args.classes) if args.dry_run else (1024, args.classes)
        items = write_jpegs(folder, n, args.dry_run, classes)
        precision = resolve_precision("fp32" if args.dry_run else "fp16", device)
        bb = backbone.to(dtype=precision.param_dtype)
        cfg = TrainConfig(epochs=2, batch_size=4 if args.dry_run else 32, precision=precision.requested,
                          num_workers=eval_workers(0, device), checkpoint=False)
        store = ViewStore(folder / "cache" / "views")
        runs = {}
        for how in ("no_store", "fill", "store"):
            method = build_method("coop", bb, classes, 16, precision, device)
            sync(device)
            res = train(method, items, folder, cfg, device, precision, seed=1,
                        store=None if how == "no_store" else store, dataset_tag="bench")
            sync(device)
            runs[how] = (res.images_seen / res.seconds, {k: v.detach().cpu() for k, v in method.learned_state().items()})
            del method
        size = sum(p.stat().st_size for p in (folder / "cache" / "views").rglob("*.safetensors"))
        same = {how: all(torch.equal(runs[how][1][k], runs["no_store"][1][k]) for k in runs["no_store"][1])
                for how in ("fill", "store")}
        rec({"bench": "views", "method": "coop", "classes": classes, "images": n, "epochs": cfg.epochs,
             "batch": cfg.batch_size, "precision": precision.effective, "loader_workers": cfg.num_workers,
             **{f"{how}_images_per_s": round(runs[how][0], 1) for how in runs},
             "speedup_store_vs_no_store": round(runs["store"][0] / runs["no_store"][0], 2),
             "store_bytes": size, "identical_state": same})
        backbone.to(dtype=torch.float32)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def over(self, reserve: float = 0.0) -> bool:
        return time.perf_counter() - self.start > self.seconds - reserve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/speed/results-gpu.jsonl"))
    ap.add_argument("--dry-run", action="store_true", help="tiny backbone on the CPU, every section, seconds")
    ap.add_argument("--budget-s", type=float, default=420.0, help="sections that would start later are skipped")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per mode and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--root", type=Path, default=Path("data"), help="a prepared toy world for jobs_per_gpu")
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--job-epochs", type=int, default=2)
    ap.add_argument("--sections", nargs="+", default=["train", "views", "eval", "loader", "jobs"])
    args = ap.parse_args(argv)
    from cpbench.models.backbone import load_backbone

    budget = Budget(args.budget_s)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if args.dry_run:
        args.steps, args.rounds, args.jobs, args.job_epochs = 1, 1, 2, 1
        args.coop_classes, args.classes, args.precisions = [10], 10, ["fp32"]
        args.sections = [s for s in args.sections if s != "jobs"]   # worker processes: tests/test_launch.py
    else:
        args.coop_classes, args.classes, args.precisions = [100, 1000], 100, ["fp16", "bf16"]
    rec = Recorder(args.out)
    rec({"bench": "machine", **machine(), "device": str(device), "dry_run": args.dry_run,
         "command": " ".join(["python", *sys.argv])})
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False   # fp32 stays fp32 (the roofline says which)
    backbone = load_backbone("tiny" if args.dry_run else "ViT-B-16", "none").to(device)
    roof = matmul_roofline(device, args.dry_run)
    rec({"bench": "roofline", "matmul_flops_per_s": {k: round(v / 1e12, 2) for k, v in roof.items()},
         "unit": "TFLOP/s", "size": 256 if args.dry_run else 8192})
    if "train" in args.sections:
        bench_train(rec, backbone, device, roof, args, budget)
    if "views" in args.sections:
        bench_views(rec, backbone, device, args, budget)
    if "eval" in args.sections:
        bench_eval(rec, backbone, device, roof, args, budget)
    if "loader" in args.sections and not budget.over(reserve=60):
        bench_loader(rec, backbone, device, args, budget)
    if "jobs" in args.sections:
        bench_jobs(rec, args, budget)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    rec({"bench": "done", "seconds": round(time.perf_counter() - budget.start, 1), "peak_gpu_mib_last": peak,
         "loadavg_end": loadavg()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
