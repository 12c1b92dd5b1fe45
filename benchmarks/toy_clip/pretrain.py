"""Pretrain the embedded toy CLIP on generated (image, caption) pairs of the toy world.

    .venv/bin/python benchmarks/toy_clip/pretrain.py --out cpbench/models/toy --eval-every 900

(the defaults are the shipped model's settings: 3600 steps x 128 pairs, patch 16; about 40 min
on 2 CPU cores; benchmarks/toy_clip/README.md has the numbers it gives)

Writes OUT/toy_clip.safetensors (fp16) and OUT/toy_clip.json (open_clip model config, the
preprocessing, and a "pretraining" block with this run's command, settings and zero-shot
numbers), then prints zero-shot accuracy on every toy dataset (base and new halves).

Deterministic: every batch is a pure function of (seed, step) and the run is a fixed number of
steps on a fixed number of CPU threads, so a re-run reproduces the weights.
Uses cpbench's toy world (cpbench.data.toy.*) and its text encoder (cpbench.models.text).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.loss import ClipLoss
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cpbench.data.toy.datasets import TOY_DATASETS, pretraining_holdout, split_images  # noqa: E402
from cpbench.models.text import PromptTextEncoder  # noqa: E402
from cpbench.data.toy.world import COLOURS, IMAGE_SIZE, PATTERNS, SHAPES, caption, render, sample_pretraining_scene  # noqa: E402

# auxiliary attribute targets: which shapes, colours and patterns a scene holds (multi-label)
ATTRIBUTES = [("shape", s) for s in SHAPES] + [("colour", c) for c in COLOURS] + [("pattern", p) for p in PATTERNS]
_ATTR_INDEX = {a: i for i, a in enumerate(ATTRIBUTES)}

MEAN = (0.505, 0.493, 0.501)  # pixel statistics of the pretraining distribution
STD = (0.359, 0.336, 0.286)
# RandomResizedCrop's area range for prompt learning on this backbone, recorded in toy_clip.json;
# None: no random crop (whole image, random flip). A crop of a 64-pixel toy image loses the
# class: at Dassl's 0.08 an 18-pixel square holds a piece of one edge, and even at 0.5 a crop of a
# two-object scene usually cuts one object away (measured: CoOp on toy_scenes +0.4 points with
# 0.5-1 crops, +17 without).
TRAIN_CROP_SCALE = None


def model_config(width: int, layers: int, embed_dim: int, context_length: int, patch: int = 16) -> dict:
    return {
        "embed_dim": embed_dim,
        "quick_gelu": False,
        "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": patch, "width": width, "layers": layers,
                       "head_width": 64, "mlp_ratio": 4.0},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": width,
                     "heads": max(1, width // 64), "layers": layers},
        "preprocess": {"image_size": IMAGE_SIZE, "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
                       "train_crop_scale": TRAIN_CROP_SCALE},
    }


def build_model(cfg: dict) -> open_clip.model.CLIP:
    return open_clip.model.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"],
                                text_cfg=cfg["text_cfg"], quick_gelu=cfg["quick_gelu"])


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W), as ToTensor + Normalize."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


# --- data: batch `step` is a pure function of (seed, step) ---------------------------------------

def make_batch(seed: int, step: int, batch: int, holdout) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Generated inline (about 1 ms an image, an eighth of a step): on 2 cores a generator process
    next to torch's 2 threads costs more than it saves. Returns images, captions and the scenes'
    multi-hot attribute targets."""
    rng = np.random.default_rng([seed, 7919, step])
    images, texts = [], []
    targets = np.zeros((batch, len(ATTRIBUTES)), np.float32)
    for i in range(batch):
        scene = sample_pretraining_scene(rng, holdout)
        images.append(render(scene))
        texts.append(caption(scene, rng))
        for o in scene.objects:
            targets[i, _ATTR_INDEX["shape", o.shape]] = 1.0
            targets[i, _ATTR_INDEX["colour", o.colour]] = 1.0
            targets[i, _ATTR_INDEX["pattern", o.pattern]] = 1.0
    return np.stack(images), texts, targets


def encode_text_cut(text_encoder: PromptTextEncoder, model, tokens: torch.Tensor) -> torch.Tensor:
    """model.encode_text(tokens, normalize=True) through cpbench's PromptTextEncoder, which cuts the
    sequences after the batch's last EOT (exact under the causal mask; bit-identical here)."""
    x = text_encoder(model.token_embedding(tokens), tokens.argmax(-1))
    return torch.nn.functional.normalize(x, dim=-1)


# --- zero-shot evaluation ------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _test_split(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return split_images(TOY_DATASETS[name], "test", seed)


@torch.no_grad()
def zero_shot(model, tokenizer, seed: int = 0, per_class: bool = False) -> dict[str, dict[str, float]]:
    """Top-1 on every toy dataset's test split: base images among base classes, new among new."""
    model.eval()
    out = {}
    for name, ds in TOY_DATASETS.items():
        images, labels = _test_split(name, seed)
        feats = []
        for i in range(0, len(images), 500):
            feats.append(model.encode_image(to_tensor(images[i:i + 500]), normalize=True))
        img = torch.cat(feats)
        txt = model.encode_text(tokenizer([ds.template.format(c) for c in ds.classnames]), normalize=True)
        dom = (model.encode_text(tokenizer([ds.domain_template.format(c) for c in ds.classnames]), normalize=True)
               if ds.domain_template else None)
        lab = torch.from_numpy(labels)
        nb, n = ds.n_base, len(ds.classnames)
        row = {}
        for half, lo, hi in (("base", 0, nb), ("new", nb, n)):
            sel = (lab >= lo) & (lab < hi)
            pred = (img[sel] @ txt[lo:hi].T).argmax(1) + lo
            row[half] = round(100.0 * (pred == lab[sel]).float().mean().item(), 2)
            row[f"{half}_chance"] = round(100.0 / (hi - lo), 2)
            if dom is not None:  # the hand-written prompt that names the domain
                pred_d = (img[sel] @ dom[lo:hi].T).argmax(1) + lo
                row[f"{half}_domain_prompt"] = round(100.0 * (pred_d == lab[sel]).float().mean().item(), 2)
            if per_class:
                row[f"{half}_per_class"] = {ds.classnames[c]: round(100.0 * (pred[lab[sel] == c] == c).float().mean().item())
                                            for c in range(lo, hi)}
        out[name] = row
    model.train()
    return out


def format_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| dataset | classes (base/new) | base | new | chance base / new | domain prompt base / new |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        ds = TOY_DATASETS[name]
        dom = f"{r['base_domain_prompt']:.1f} / {r['new_domain_prompt']:.1f}" if "base_domain_prompt" in r else "-"
        lines.append(f"| {name} | {len(ds.classnames)} ({ds.n_base}/{len(ds.classnames) - ds.n_base}) | "
                     f"{r['base']:.1f} | {r['new']:.1f} | {r['base_chance']:.1f} / {r['new_chance']:.1f} | {dom} |")
    return "\n".join(lines)


# --- training --------------------------------------------------------------------------------------


def lr_at(step: int, steps: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def param_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "ln" in n or "bias" in n or "logit_scale" in n else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for toy_clip.safetensors and toy_clip.json")
    ap.add_argument("--steps", type=int, default=3600)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--embed-dim", type=int, default=128)
    ap.add_argument("--context-length", type=int, default=32)
    ap.add_argument("--logit-scale", default="learned", choices=("fixed", "learned"),
                    help="fixed: exp(s)=100 throughout (CLIP's final value); learned: from 1/0.07, clamped at 100")
    ap.add_argument("--export-logit-scale", type=float, default=100.0,
                    help="if > 0: the shipped model's logit scale (exp), e.g. 100 as CLIP's; the learned value is recorded")
    ap.add_argument("--aux-weight", type=float, default=1.0,
                    help="weight of an auxiliary multi-label attribute loss on the image embedding (a linear "
                         "head, dropped before export); 0 = contrastive only")
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--per-class", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = model_config(args.width, args.layers, args.embed_dim, args.context_length, args.patch)
    model = build_model(cfg)
    text_encoder = PromptTextEncoder(model)
    init_scale = math.log(100.0) if args.logit_scale == "fixed" else math.log(1 / 0.07)
    with torch.no_grad():
        model.logit_scale.fill_(init_scale)
    model.logit_scale.requires_grad_(args.logit_scale == "learned")
    n_params = sum(p.numel() for p in model.parameters())
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=args.context_length)
    aux_head = torch.nn.Linear(args.embed_dim, len(ATTRIBUTES))
    groups = param_groups(model, args.wd)
    if args.aux_weight > 0:
        groups[0]["params"].append(aux_head.weight)
        groups[1]["params"].append(aux_head.bias)
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    print(f"toy CLIP: {n_params / 1e6:.2f}M parameters, {args.steps} steps x {args.batch} pairs, "
          f"{args.threads} threads", flush=True)

    holdout = pretraining_holdout()
    started = time.time()
    history = []
    model.train()
    for step in range(args.steps):
        images, texts, targets = make_batch(args.seed, step, args.batch, holdout)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.warmup, args.lr)
        img_raw = model.encode_image(to_tensor(images))
        img_f = torch.nn.functional.normalize(img_raw, dim=-1)
        txt_f = encode_text_cut(text_encoder, model, tokenizer(texts))
        loss = loss_fn(img_f, txt_f, model.logit_scale.exp())
        if args.aux_weight > 0:
            aux = torch.nn.functional.binary_cross_entropy_with_logits(
                aux_head(img_raw), torch.from_numpy(targets), reduction="sum") / len(images)
            loss_clip = loss.item()
            loss = loss + args.aux_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100.0))
        if step % 50 == 0 or step == args.steps - 1:
            el = time.time() - started
            extra = f" (contrastive {loss_clip:.4f})" if args.aux_weight > 0 else ""
            print(f"step {step:5d}  loss {loss.item():.4f}{extra}  scale {model.logit_scale.exp().item():.1f}  "
                  f"{(step + 1) * args.batch / el:.0f} pairs/s  {el / 60:.1f} min", flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            res = zero_shot(model, tokenizer, per_class=args.per_class)
            history.append({"step": step + 1, "minutes": round((time.time() - started) / 60, 1), "zero_shot": res})
            print(f"-- step {step + 1}\n" + format_table(res), flush=True)
    train_minutes = (time.time() - started) / 60

    # ship fp16; evaluate exactly what a loader gets back (fp16 -> fp32)
    learned_scale = model.logit_scale.exp().item()
    if args.export_logit_scale > 0:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(args.export_logit_scale))
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "toy_clip.safetensors"
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    tmp = weights.with_name(weights.name + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, weights)
    shipped = build_model(cfg)
    shipped.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()}, strict=True)
    results = zero_shot(shipped, tokenizer, per_class=args.per_class)

    cfg["init_logit_scale"] = model.logit_scale.item()
    cfg["pretraining"] = {
        "command": "python benchmarks/toy_clip/pretrain.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "steps": args.steps, "batch_size": args.batch, "pairs_seen": args.steps * args.batch, "seed": args.seed,
        "optimizer": f"AdamW lr {args.lr} wd {args.wd} betas (0.9, 0.98), {args.warmup} warm-up steps, cosine",
        "loss": "open_clip ClipLoss" + (f" + {args.aux_weight} x multi-label attribute BCE on the image embedding "
                                         "(linear head, not shipped)" if args.aux_weight > 0 else ""), "logit_scale": args.logit_scale, "learned_logit_scale": round(learned_scale, 2),
        "shipped_logit_scale": round(model.logit_scale.exp().item(), 2), "threads": args.threads,
        "parameters": n_params, "train_minutes": round(train_minutes, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, torch {torch.__version__}, open_clip {open_clip.__version__}",
        "zero_shot_template": "per dataset (a photo of a {}.)", "zero_shot": results,
    }
    if history:
        cfg["pretraining"]["history"] = history
    cfg_path = args.out / "toy_clip.json"
    tmp = cfg_path.with_name(cfg_path.name + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, cfg_path)
    print(f"\nwrote {weights} ({weights.stat().st_size / 1e6:.1f} MB) and {cfg_path}; "
          f"trained {train_minutes:.1f} min")
    print(format_table(results))
    if args.per_class:
        print(json.dumps({k: {h: v[f"{h}_per_class"] for h in ("base", "new")} for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
