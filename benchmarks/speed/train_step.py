"""Time training steps of a method, naive vs optimised text path, in a fresh process.

Prints one JSON line: method, backbone, classes, mode, seconds per step, images/s, peak RSS.
"naive" = full-length text sequences (the official repos); "fast" = sequences cut after the
longest EOT (exact under CLIP's causal mask), as recorded in README.md; "shared" = cut and the
shared prefix encoded once (issue 21; cpu.py and gpu.py measure it side by side). Images are random tensors so only model work is
timed. Used by run_all.sh; can be run alone:

    python benchmarks/speed/train_step.py --method coop --backbone toy --classes 100 --mode fast
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="coop")
    ap.add_argument("--backbone", default="toy")
    ap.add_argument("--pretrained", default="")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--mode", choices=["naive", "fast", "shared"], default="fast")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cpbench.config import resolve
    from cpbench.engine.precision import resolve_precision
    from cpbench.methods.registry import get_method_class
    from cpbench.models.backbone import load_backbone

    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device)
    pretrained = args.pretrained or ("none" if args.backbone != "toy" else "toy")
    backbone = load_backbone(args.backbone, pretrained).to(device=device, dtype=precision.param_dtype)
    backbone.text.truncate = args.mode != "naive"
    backbone.text.share_prefix = args.mode == "shared"
    cls = get_method_class(args.method)
    cfg = resolve(args.method, cls.Options)
    names = [f"object number {i} of kind {i % 7}" for i in range(args.classes)]
    torch.manual_seed(0)
    method = cls(backbone, names, cfg.options).to(device=device, dtype=precision.param_dtype)
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    size = backbone.preprocess.image_size
    images = torch.randn(args.batch, 3, size, size, device=device, dtype=precision.param_dtype)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    method.train()

    def step():
        with precision.autocast(device):
            _, losses = method.forward_train(images, labels)
            loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({"method": args.method, "backbone": args.backbone, "classes": args.classes,
                      "batch": args.batch, "mode": args.mode, "precision": precision.effective,
                      "device": args.device, "sec_per_step": round(dt, 4),
                      "images_per_s": round(args.batch / dt, 2), "peak_mib": round(peak, 1)}))


if __name__ == "__main__":
    main()
