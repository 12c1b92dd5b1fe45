"""Continual (class-incremental) learning: LAMM's claim that learning label embeddings alone
learns new classes without forgetting old ones (the official repository only trains the two
halves separately, ``scripts/lamm/base2new_train_set{1,2}_lamm_all.sh``; this runs them in
sequence and measures forgetting).

Tasks. The dataset's classes, in the job's class order (``labels``: label order; ``seed:N``: the
labels shuffled by ``random.Random(N)``, one order for every run seed, as iCaRL's fixed class
order), are cut into T consecutive tasks of near-equal size, earlier tasks taking the remainder.
T = 2 in label order is CoOp's base half (the first ceil(n/2) labels) then the new half: LAMM's
set1 and set2.

Training. Task t trains the method on the k-shot training images of its own classes only (as
LAMM's set scripts train each half; labels 0..|C_t|-1 in task order), built on those classes and
starting from the learned state after task t-1: every learned *parameter* carries over (shared
context, meta-nets, deep prompts), except the method's ``class_rows`` (LAMM's label rows, CPL's
mask columns), which start fresh for the new classes; buffers restart too (training-internal
state such as PromptSRC's GPA sums; LAMM's frozen initial rows are class rows). After the task,
the class rows of the earlier tasks are put back in front of the new ones, so a row is trained in
its own task only and never changes afterwards. Options that depend on the class list are taken
over all the dataset's classes (``Method.options_for_classes``: LAMM's label length), so every
task's rows have the same shape. A method that cannot do this says so (``Method.unsupported``:
the linear probe, CoOp with a class-specific context).

Evaluation. After task t the method is built on every class seen so far (tasks 1..t, labels in
task order) with that state, and each test image is classified among all of them
(class-incremental): one row per task j <= t (subset ``task<j>``: the test images of task j's
classes) and one for all seen classes together (subset ``seen``). Each task's test images are
also classified among that task's own classes only (subset ``task<j>-own``, task-incremental):
with the classes of other tasks out of the way this isolates what training later tasks did to
task j's own logits, which is LAMM's claim (exactly no change when the context is frozen and the
label rows are per class). ``task`` = t, ``n_tasks`` = T, ``class_order`` = the class names in
task order. The metrics (average incremental accuracy, final
accuracy, forgetting) are defined and cited in ``cpbench/results/continual.py``.

Resume. Each task trains in ``checkpoints/<training key>/task-<t>/`` (per-epoch checkpoints, then
its final state), so a re-run replays the finished tasks from their final checkpoints and resumes
the interrupted one from its last epoch; the rows (of all tasks) are written once, at the end.
"""

from __future__ import annotations

import json
import random
import shutil
import uuid

import torch

from cpbench import faults
from cpbench.data import prepare as prep
from cpbench.data.splits import Item
from cpbench.engine.cache import FeatureCache
from cpbench.engine.evaluate import evaluate
from cpbench.engine.precision import seed_everything
from cpbench.engine.train import epoch_seed
from cpbench.errors import UserError
from cpbench.paths import cache_root
from cpbench.protocols.jobs import Job, PlanRequest, Target
from cpbench.protocols.steps import (build_method, checkpoint_dir, history_ident, run_fields, start_own_runner,
                                     train_or_load)
from cpbench.results.schema import environment, now

DEFAULT_ORDER = "labels"


def parse_order(text: str) -> str:
    """``labels`` or an integer N (-> ``seed:N``); anything else is a user error."""
    text = str(text).strip()
    if text == DEFAULT_ORDER:
        return text
    if text.startswith("seed:"):
        text = text[5:]
    if text.isdigit():
        return f"seed:{int(text)}"
    raise UserError(f"--class-order takes `labels` (label order) or an integer seed (e.g. 1993), got {text!r}")


def plan(method: str, datasets: list[str], seeds: list[int], shots: int = 16, tasks: int = 2,
         class_order: str = DEFAULT_ORDER) -> list[Job]:
    return [Job(method, "continual", d, "all", shots, seed, (Target(d, "seen"),), tasks, class_order)
            for d in datasets for seed in seeds]


def plan_jobs(req: PlanRequest, datasets: list[str]) -> list[Job]:
    return plan(req.method, datasets, list(req.seeds), req.shots[0], req.tasks, parse_order(req.class_order))


def default_targets(prepared: list[str]) -> list[str]:
    return list(prepared)


def class_order(n_classes: int, order: str) -> list[int]:
    labels = list(range(n_classes))
    if order != DEFAULT_ORDER:
        random.Random(int(order.split(":", 1)[1])).shuffle(labels)
    return labels


def split_tasks(order: list[int], tasks: int) -> list[list[int]]:
    """``order`` cut into ``tasks`` consecutive parts of near-equal size, the first ones larger."""
    if not 1 <= tasks <= len(order):
        raise UserError(f"--tasks must be between 1 and the number of classes ({len(order)}), got {tasks}")
    size, extra = divmod(len(order), tasks)
    out, start = [], 0
    for t in range(tasks):
        end = start + size + (1 if t < extra else 0)
        out.append(order[start:end])
        start = end
    return out


def relabel(items, labels: list[int]) -> list[Item]:
    """The items of ``labels``' classes, relabelled to their position in ``labels``."""
    pos = {label: i for i, label in enumerate(labels)}
    return [Item(it.path, pos[it.label], it.classname) for it in items if it.label in pos]


def carry_over(method, state: dict[str, torch.Tensor]) -> None:
    """Load every learned parameter of ``state`` into ``method`` except its class rows (fresh for
    the new classes); buffers keep their fresh values."""
    params = {name for name, _ in method.named_parameters()}
    own = method.learned_state()
    new = dict(own)
    for k, v in own.items():
        if k in params and k not in method.class_rows:
            if state[k].shape != v.shape:
                raise ValueError(f"{method.name}: {k} has a per-class shape but is not in class_rows")
            new[k] = state[k]
    method.load_learned_state(new)


def grow(old: dict[str, torch.Tensor] | None, new: dict[str, torch.Tensor], class_rows: dict[str, int]) -> dict:
    """The state after a task: the task's learned state, with the earlier tasks' class rows in front."""
    out = {k: v.detach().clone() for k, v in new.items()}
    if old is not None:
        for k, axis in class_rows.items():
            out[k] = torch.cat([old[k].to(out[k].device, out[k].dtype), out[k]], dim=axis)
    return out


def run(job: Job, cfg, key: str, backbone, s, store, reporter) -> list[dict]:
    """Train task after task (each from its checkpoints when they exist), evaluate after each, and
    write every task's rows at the end (the module docstring has the rules)."""
    cls, precision, started_at = start_own_runner(job, cfg, s)
    ds = prep.load(job.train_dataset, s.data_root)
    names = ds.split.classnames
    order = class_order(len(names), job.class_order)
    tasks = split_tasks(order, job.tasks)
    options = cls.options_for_classes(cfg.options, names, backbone)
    train_all = ds.fewshot(job.shots, job.seed).train
    ckpt_root = checkpoint_dir(job, cfg, s)
    if s.force and ckpt_root.exists():
        shutil.rmtree(ckpt_root)
    cache = FeatureCache(cache_root() / "features") if s.feature_cache else None
    env, run_id = environment(), uuid.uuid4().hex[:12]
    order_json = json.dumps([names[label] for label in order])
    state, seconds, rows = None, 0.0, []
    for t, task in enumerate(tasks, 1):
        items = relabel(train_all, task)
        if cls.trainable and not items:
            raise UserError(f"{ds.name}: no training images for task {t}; check the split file in {ds.dir}")
        seed_everything(epoch_seed(job.seed, 300_000 + t))
        method = build_method(cls, backbone, [names[label] for label in task], options, ds.spec.template, s, precision)
        if state is not None:
            carry_over(method, state)
        seconds += train_or_load(method, cfg, s, precision, epoch_seed(job.seed, 400_000 + t), items, ds.image_root,
                                 ckpt_root / f"task-{t}", reporter, f"{job.method} on {ds.name} task {t}/{len(tasks)}",
                                 history_ident(job, cfg, s, task=t))
        state = grow(state, method.learned_state(), cls.class_rows)
        seen = [label for part in tasks[:t] for label in part]
        scorer = build_method(cls, backbone, [names[label] for label in seen], options, ds.spec.template, s, precision)
        scorer.load_learned_state(state)
        common = {**run_fields(job, key, cfg, s, run_id, scorer, precision, cfg.train.epochs if cls.trainable else 0,
                               seconds, cache is not None, started_at, env),
                  "eval_dataset": ds.name, "n_classes": len(seen), "task": t, "n_tasks": len(tasks),
                  "class_order": order_json}
        correct = n = 0
        for j, part in enumerate(tasks[:t], 1):
            test = [it for it in ds.split.test if it.label in set(part)]
            for subset, classes in ((f"task{j}", seen), (f"task{j}-own", part)):
                # the seen classes' learned rows stay theirs (by position in the seen list)
                scorer.set_training_subset([names[label] for label in classes], [seen.index(label) for label in classes])
                scorer.to(device=s.device, dtype=precision.param_dtype)
                torch.manual_seed(epoch_seed(job.seed, 200_000 + 1000 * t + 10 * j + (subset != f"task{j}")))
                among = (f"among all {len(classes)} seen classes" if subset == f"task{j}"
                         else f"among its own {len(classes)} classes")
                reporter.phase(f"evaluating task {j} after task {t} {among} ({len(test)} images; rows {subset})")
                res = evaluate(scorer, relabel(test, classes), ds.image_root, s.device, precision,
                               cfg.train.test_batch_size, cfg.train.num_workers, cache=cache, dataset=ds.cache_tag,
                               on_batch=lambda b, nb: (reporter.advance(b, nb), faults.point("eval")))
                rows.append({**common, "subset": subset, "n_classes": len(classes), "accuracy": res.accuracy,
                             "correct": res.correct, "n_test": res.n, "eval_seconds": res.seconds,
                             "finished_at": now()})
                reporter.row(rows[-1])
            correct, n = correct + rows[-2]["correct"], n + rows[-2]["n_test"]
        rows.append({**common, "subset": "seen", "accuracy": 100.0 * correct / max(1, n), "correct": correct,
                     "n_test": n, "eval_seconds": sum(r["eval_seconds"] for r in rows if r.get("task") == t),
                     "finished_at": now()})
        reporter.row(rows[-1])
    store.write(key, rows)
    return rows
