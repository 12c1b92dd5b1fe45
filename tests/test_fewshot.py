"""Few-shot sampling equals Dassl's ``generate_fewshot_dataset`` and base/new subsetting equals
CoOp's ``subsample_classes``, each restated independently here."""

from __future__ import annotations

import math
import random
from collections import defaultdict

from cpbench.data.splits import Item, Split, make_fewshot, subsample_classes


def dassl_generate_fewshot(data_source, num_shots):
    # Independent restatement of Dassl DatasetBase.generate_fewshot_dataset (repeat=False)
    # with the module-level `random` seeded by set_random_seed.
    tracker = defaultdict(list)
    for item in data_source:
        tracker[item.label].append(item)
    dataset = []
    for label, items in tracker.items():
        if len(items) >= num_shots:
            sampled = random.sample(items, num_shots)
        else:
            sampled = items
        dataset.extend(sampled)
    return dataset


def _split(n_classes=7, per_class=(3, 9, 20), seed=0) -> Split:
    rng = random.Random(seed)
    parts = []
    for count in per_class:
        items = [Item(f"c{c}/{i}.jpg", c, f"class_{c}") for c in range(n_classes) for i in range(count + c % 3)]
        rng.shuffle(items)  # labels appear interleaved, not sorted
        parts.append(tuple(items))
    return Split(*parts)


def test_fewshot_matches_dassl_restatement():
    split = _split()
    for k in (1, 2, 4, 5, 16):
        for seed in (1, 2, 3):
            random.seed(seed)
            want_train = dassl_generate_fewshot(split.train, k)
            want_val = dassl_generate_fewshot(split.val, min(k, 4))
            got = make_fewshot(split, k, seed)
            assert list(got.train) == want_train
            assert list(got.val) == want_val


def test_fewshot_seeds_differ_and_repeat():
    split = _split(per_class=(30, 10, 10))
    a1, a2, b = make_fewshot(split, 4, 1), make_fewshot(split, 4, 1), make_fewshot(split, 4, 2)
    assert a1.train == a2.train
    assert a1.train != b.train
    assert len(a1.train) == 4 * 7


def test_subsample_base_new_relabels_like_coop():
    split = _split(n_classes=5)
    (tr, va, te), names = subsample_classes("base", split.train, split.val, split.test)
    labels = sorted({i.label for i in split.train})
    m = math.ceil(len(labels) / 2)
    assert names == [f"class_{c}" for c in labels[:m]]
    assert {i.label for i in te} == set(range(m))
    assert all(i.classname == f"class_{labels[i.label]}" for i in te)
    (_, _, te_new), new_names = subsample_classes("new", split.train, split.val, split.test)
    assert new_names == [f"class_{c}" for c in labels[m:]]
    assert {i.label for i in te_new} == set(range(len(labels) - m))
    assert len(te) + len(te_new) == len(split.test)
