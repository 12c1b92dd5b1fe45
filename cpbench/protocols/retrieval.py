"""Few-shot image-text retrieval (CPL, He et al. EMNLP'22, section 4 "image-text retrieval"):
train on k image-caption pairs of an image-caption dataset, evaluate recall at 1/5/10 from image
to text and from text to image on its test split; zero-shot CLIP is the baseline.

As CPL trains it (``DATASET.SUBSAMPLE_CLASSES fewshot``: each training pair is a class of its
own), every training caption is a class name and an image's label is its own caption: the method
is trained with its usual loss over the k training captions (CoOp: learned context prepended to
each caption; CoCoOp/CPL: plus the image-conditioned bias; CPL's negative "class" of a caption is
the most similar other caption, and its negative image that caption's image). ``--shots`` is the
number of training pairs k (CPL's 0.5/1/3/5 %: see ``cpbench/data/captions.py``). Evaluation ranks
all test captions for every test image and all test images for every caption
(``cpbench/engine/retrieval.py``, ties counted against the query); one row per direction and K
(subset ``i2t`` | ``t2i``, ``recall_at`` = K, ``accuracy`` = R@K in percent, ``n_test`` = the
queries, ``n_classes`` = the candidates). Test captions that are the same text once the tokenizer
has cleaned them are one target (CPL's ``cname2lab``), so a caption shared by two images is no
miss for either; captions longer than the text context leaves them are cut by the tokenizer, as in
the official code, and ``run`` says how many once (``long_caption_note``).
"""

from __future__ import annotations

import shutil
import time
import uuid

import torch

from cpbench import faults
from cpbench.data import captions
from cpbench.data.splits import Item
from cpbench.engine.cache import FeatureCache
from cpbench.engine.features import encode_all, image_features
from cpbench.engine.precision import seed_everything
from cpbench.engine.retrieval import KS, caption_targets, long_captions, recall_at_k, similarity
from cpbench.engine.train import epoch_seed
from cpbench.methods.base import clean
from cpbench.paths import cache_root
from cpbench.protocols.jobs import Job, PlanRequest, Target
from cpbench.protocols.steps import (build_method, checkpoint_dir, history_ident, run_fields, start_own_runner,
                                     train_or_load)
from cpbench.results.schema import environment, now


def plan(method: str, datasets: list[str], seeds: list[int], shots: list[int]) -> list[Job]:
    return [Job(method, "retrieval", d, "all", k, seed, (Target(d, "test"),))
            for d in datasets for k in shots for seed in seeds]


def plan_jobs(req: PlanRequest, datasets: list[str]) -> list[Job]:
    return plan(req.method, datasets, list(req.seeds), list(dict.fromkeys(req.shots)))


def default_targets(prepared: list[str]) -> list[str]:
    return list(prepared)   # the prepared image-caption datasets (registry: task = retrieval)


def run(job: Job, cfg, key: str, backbone, s, store, reporter) -> list[dict]:
    """Train on the job's image-caption pairs (or load the final checkpoint), rank every test
    caption for every test image and back, write one row per direction and K."""
    cls, precision, started_at = start_own_runner(job, cfg, s)
    ds = captions.load(job.train_dataset, s.data_root)
    pairs = ds.pairs(job.shots, job.seed)
    items = [Item(path, i, text) for i, (path, text) in enumerate(pairs)]
    seed_everything(job.seed)
    method = build_method(cls, backbone, [text for _, text in pairs], cfg.options, ds.spec.template, s, precision)
    ckpt_dir = checkpoint_dir(job, cfg, s)
    if s.force and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    seconds = train_or_load(method, cfg, s, precision, job.seed, items, ds.image_root, ckpt_dir, reporter,
                            f"{job.method} on {ds.name} ({len(items)} pairs)", history_ident(job, cfg, s))
    t0 = time.time()
    test = ds.split.test
    test_items = [Item(p.path, i, "") for i, p in enumerate(test)]
    texts = [c for p in test for c in p.captions]
    caption_image = torch.tensor([i for i, p in enumerate(test) for _ in p.captions])
    cache = FeatureCache(cache_root() / "features") if s.feature_cache else None
    method.eval()
    reporter.phase(f"encoding {len(test_items)} test images of {ds.name}")
    progress = lambda b, n: (reporter.advance(b, n), faults.point("eval"))  # noqa: E731
    feats, _ = image_features(method, test_items, ds.image_root, s.device, precision, cfg.train.test_batch_size,
                              cfg.train.num_workers, cache, ds.cache_tag, progress)
    if feats is None:
        feats = encode_all(method, test_items, ds.image_root, s.device, precision, cfg.train.test_batch_size,
                           cfg.train.num_workers, progress)
    torch.manual_seed(epoch_seed(job.seed, 200_000))  # methods that sample at test time
    # captions the text encoder cannot tell apart (the same tokens once cleaned) are one target
    targets, caption_target = caption_targets(texts, lambda t: tuple(backbone.tokenizer.encode(clean(t))))
    reporter.phase(f"scoring {len(test_items)} images x {len(targets)} distinct captions")
    sim = similarity(method, feats, targets, s.device, precision, cfg.train.test_batch_size, progress)
    recalls = recall_at_k(sim, caption_image, caption_target=caption_target)
    eval_seconds = time.time() - t0
    common = {**run_fields(job, key, cfg, s, uuid.uuid4().hex[:12], method, precision,
                           cfg.train.epochs if cls.trainable else 0, seconds, cache is not None, started_at,
                           environment()),
              "eval_dataset": ds.name, "eval_seconds": eval_seconds}
    rows = []
    for direction, candidates in (("i2t", len(targets)), ("t2i", len(test))):
        for k in KS:
            hits, queries = recalls[(direction, k)]
            rows.append({**common, "subset": direction, "recall_at": k, "accuracy": 100.0 * hits / max(1, queries),
                         "correct": hits, "n_test": queries, "n_classes": candidates, "finished_at": now()})
            reporter.row(rows[-1])
    store.write(key, rows)
    return rows


def long_caption_note(jobs: list[Job], backbone, s) -> str:
    """One line per run: how many test captions of each dataset are longer than the text context
    leaves them (start and end tokens, the full stop and the method's learned context), so their cut
    ends are said, not silent ("" when none)."""
    from cpbench.protocols.jobs import job_config

    parts = []
    for dataset in dict.fromkeys(j.train_dataset for j in jobs):
        job = next(j for j in jobs if j.train_dataset == dataset)
        n_ctx = int(getattr(job_config(job, s).options, "n_ctx", 0) or 0)
        texts = [c for p in captions.load(dataset, s.data_root).split.test for c in p.captions]
        reserved = backbone.text_start + 2 + n_ctx
        n = long_captions(texts, lambda t: backbone.n_tokens(clean(t)), backbone.context_length, reserved)
        if n:
            parts.append(f"{dataset}: {n:,} of {len(texts):,} test captions have more than "
                         f"{backbone.context_length - reserved} tokens")
    if not parts:
        return ""
    return ("; ".join(parts) + f" (the room a {backbone.context_length}-token context leaves after the start, the "
            "learned context, the full stop and the end token): the tokenizer cuts their ends, as in the "
            "official code")
