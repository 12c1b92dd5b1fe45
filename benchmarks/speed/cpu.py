"""The CPU speed benchmark (the counterpart of gpu.py): one command, every figure a ratio measured
side by side in this process.

    python benchmarks/speed/cpu.py --root data --out benchmarks/speed/results-cpu.jsonl

Needs ``cpbench prepare toy`` (and, for the ViT-B/16 cold evaluation on real JPEGs,
``cpbench prepare caltech101``; without it toy_shapes images are used). Random ViT-B/16 weights,
no network. Prints JSON lines and writes them to ``--out``:

1. ``train_step``: CoOp few-shot (16 context tokens) and base-to-new (4 tokens from "a photo of
   a") at 100 and 1000 classes (ImageNet names), text modes naive / cut / shared interleaved
   round by round (one round without warm-up at 1000 classes). Random image *features* stand in for the frozen image encoder, whose forward
   is the same in every mode (no gradient flows through it) and is timed once for batch 32
   (``image_forward``); ``step_s`` adds it. Modes whose activations would not fit in the
   available memory are skipped and say so.
2. ``cold_eval``: images/s of a cold evaluation (decode + transform + image encoder), the old
   pipeline (float transform per image) against cpbench's (uint8 pixels normalised per batch),
   toy backbone on toy_shapes and ViT-B/16 on Caltech101; features compared bit for bit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (Recorder, class_names, coop_options, loadavg, machine, median, set_text_mode, sgd,  # noqa: E402
                    text_tokens, timed, train_step)


def available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def activation_bytes(backbone, tokens: int) -> int:
    """A generous estimate of the saved activations of a text forward+backward (~16 floats of
    width D per token per layer, fp32), so the benchmark never pushes a shared machine into swap."""
    return tokens * backbone.text_layers * 16 * backbone.text_width * 4


def bench_train(rec, backbone, label: str, classes: list[int], rounds: int, batch: int, image_s: float | None,
                warmup: bool = True):
    from cpbench.engine.precision import resolve_precision
    from cpbench.methods.coop import CoOp

    device = torch.device("cpu")
    precision = resolve_precision("fp32", device)
    for n_classes in classes:
        for n_ctx in (16, 4):
            torch.manual_seed(0)
            method = CoOp(backbone, class_names(n_classes), coop_options(n_ctx))
            opt = sgd(method)
            feats = torch.nn.functional.normalize(torch.randn(batch, backbone.embed_dim), dim=-1)
            labels = torch.randint(0, n_classes, (batch,))
            modes, skipped = [], {}
            for mode in ("naive", "cut", "shared"):
                need = activation_bytes(backbone, text_tokens(method, mode))
                if need > 0.6 * available_bytes():
                    skipped[mode] = f"needs ~{need / 2**30:.1f} GiB of activations"
                else:
                    modes.append(mode)
            times = {m: [] for m in modes}
            for r in range(rounds + int(warmup)):          # round 0 warms up
                for mode in modes:
                    set_text_mode(backbone, mode)
                    dt = timed(lambda: train_step(method, precision, device, features=feats, labels=labels, opt=opt), device)
                    if r or not warmup:
                        times[mode].append(dt)
            set_text_mode(backbone, "shared")
            row = {"bench": "train_step", "backbone": label, "method": "coop", "classes": n_classes, "n_ctx": n_ctx,
                   "batch": batch, "rounds": rounds, "skipped": skipped}
            for mode in modes:
                t = median(times[mode])
                row[mode] = {"text_side_s": round(t, 4), "text_tokens": text_tokens(method, mode),
                             "runs_s": [round(x, 3) for x in times[mode]]}
                if image_s is not None:
                    row[mode]["step_s"] = round(t + image_s, 4)
                    row[mode]["images_per_s"] = round(batch / (t + image_s), 2)
            for a, b in (("naive", "shared"), ("cut", "shared"), ("naive", "cut")):
                if a in modes and b in modes:
                    row[f"text_side_speedup_{a}_vs_{b}"] = round(row[a]["text_side_s"] / row[b]["text_side_s"], 2)
                    if image_s is not None:
                        row[f"step_speedup_{a}_vs_{b}"] = round(row[a]["step_s"] / row[b]["step_s"], 2)
            rec(row)


def image_forward_s(backbone, batch: int, rounds: int) -> float:
    x = torch.randn(batch, 3, backbone.preprocess.image_size, backbone.preprocess.image_size)
    with torch.no_grad():
        backbone.encode_image(x[:2])
        return median([timed(lambda: backbone.encode_image(x), torch.device("cpu")) for _ in range(rounds)])


def bench_cold_eval(rec, backbone, label: str, root: Path, dataset: str, n_images: int, rounds: int, batch: int):
    """Old pipeline (float transform per image, as before issue 21) vs cpbench's encode_all."""
    from torch.utils.data import DataLoader

    from cpbench.data import prepare as prep
    from cpbench.data.images import ImageList, test_transform
    from cpbench.engine.features import encode_all
    from cpbench.engine.precision import resolve_precision
    from cpbench.methods.zeroshot import ZeroShotCLIP, ZeroShotOptions

    device = torch.device("cpu")
    precision = resolve_precision("fp32", device)
    ds = prep.load(dataset, root)
    items = ds.split.test[:n_images]
    method = ZeroShotCLIP(backbone, ds.split.classnames, ZeroShotOptions())

    @torch.no_grad()
    def before():
        loader = DataLoader(ImageList(items, ds.image_root, test_transform(backbone.preprocess)), batch_size=batch)
        return torch.cat([method.encode_images(x).float() for x, _, _ in loader])

    def after():
        return encode_all(method, items, ds.image_root, device, precision, batch)

    out, times = {}, {"before": [], "after": []}
    for r in range(rounds):
        for name, fn in (("before", before), ("after", after)):
            t0 = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - t0)
    tb, ta = median(times["before"]), median(times["after"])
    rec({"bench": "cold_eval", "backbone": label, "dataset": dataset, "images": len(items), "batch": batch,
         "rounds": rounds, "before_images_per_s": round(len(items) / tb, 2),
         "after_images_per_s": round(len(items) / ta, 2), "speedup": round(tb / ta, 3),
         "identical_features": bool(torch.equal(out["before"], out["after"])),
         "runs_s": {k: [round(x, 3) for x in v] for k, v in times.items()}})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("data"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/speed/results-cpu.jsonl"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds at 100 classes (1000: one)")
    ap.add_argument("--vit-eval-images", type=int, default=32)
    ap.add_argument("--toy-eval-images", type=int, default=800)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of this script)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from cpbench.data import prepare as prep
    from cpbench.models.backbone import load_backbone

    rec = Recorder(args.out)
    started = time.perf_counter()
    rec({"bench": "machine", **machine(), "command": " ".join(["python", *sys.argv])})
    vit = load_backbone("tiny" if args.quick else "ViT-B-16", "none")
    vit_label = "tiny" if args.quick else "ViT-B-16 (random weights)"
    batch = 32
    img_s = image_forward_s(vit, batch, 1)
    rec({"bench": "image_forward", "backbone": vit_label, "batch": batch, "seconds": round(img_s, 3),
         "images_per_s": round(batch / img_s, 2)})
    classes = [10, 20] if args.quick else [100, 1000]
    bench_train(rec, vit, vit_label, classes[:1], args.rounds, batch, img_s)
    bench_train(rec, vit, vit_label, classes[1:], 1, batch, img_s, warmup=False)
    toy = load_backbone("toy", "toy")
    bench_cold_eval(rec, toy, "toy", args.root, "toy_shapes", 64 if args.quick else args.toy_eval_images, 3, 100)
    vit_ds = "caltech101" if (args.root / "caltech-101" / ".cpbench.json").exists() else "toy_shapes"
    if vit_ds != "caltech101":
        prep.load(vit_ds, args.root)  # a clear message if toy is not prepared either
    bench_cold_eval(rec, vit, vit_label, args.root, vit_ds, 8 if args.quick else args.vit_eval_images, 1, batch)
    rec({"bench": "done", "seconds": round(time.perf_counter() - started, 1), "loadavg_end": loadavg()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
