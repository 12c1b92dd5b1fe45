"""Evaluate zero-shot CLIP + CoOp on several prepared datasets × seeds × {base, new}, once the
naive way (no feature cache, class text features recomputed for every test batch, full-length
text sequences — what the official repos do) and once with cpbench's caches, in one process.
Accuracies must be identical; prints one JSON line with both timings and the speed-up.

    python benchmarks/speed/eval_many.py --root data --datasets toy_a toy_b toy_c toy_d --backbone toy
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="data")
    ap.add_argument("--datasets", nargs="+", required=True)
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--backbone", default="toy")
    ap.add_argument("--pretrained", default="toy")
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args()

    from cpbench.config import resolve
    from cpbench.data import prepare as prep
    from cpbench.data.splits import subsample_classes
    from cpbench.engine.cache import FeatureCache
    from cpbench.engine.evaluate import evaluate
    from cpbench.engine.precision import resolve_precision
    from cpbench.methods.registry import get_method_class
    from cpbench.models.backbone import load_backbone

    device = torch.device("cpu")
    precision = resolve_precision("fp32", device)
    backbone = load_backbone(args.backbone, args.pretrained)
    cache_dir = Path(tempfile.mkdtemp(prefix="cpbench-bench-cache-"))

    def sweep(fast: bool):
        backbone.text.truncate = fast
        cache = FeatureCache(cache_dir) if fast else None
        accs = []
        t0 = time.perf_counter()
        for d in args.datasets:
            ds = prep.load(d, Path(args.root))
            for seed in args.seeds:
                fs = ds.fewshot(16, seed)
                for subset in ("base", "new"):
                    (_, _, test), names = subsample_classes(subset, fs.train, fs.val, ds.split.test)
                    for mname in ("zeroshot", "coop"):
                        cls = get_method_class(mname)
                        torch.manual_seed(seed)
                        m = cls(backbone, names, resolve(mname, cls.Options).options, template=ds.spec.template)
                        r = evaluate(m, test, ds.image_root, device, precision, args.batch, cache=cache,
                                     dataset=d, context_per_batch=not fast)
                        accs.append(r.correct)
        return time.perf_counter() - t0, accs

    naive_s, naive_acc = sweep(False)
    fast_s, fast_acc = sweep(True)
    shutil.rmtree(cache_dir, ignore_errors=True)
    print(json.dumps({"datasets": args.datasets, "seeds": args.seeds, "evaluations": len(naive_acc),
                      "naive_seconds": round(naive_s, 2), "cached_seconds": round(fast_s, 2),
                      "speedup": round(naive_s / fast_s, 2), "identical_accuracies": naive_acc == fast_acc}))


if __name__ == "__main__":
    main()
