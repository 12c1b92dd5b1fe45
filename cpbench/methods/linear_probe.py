"""Linear-probe CLIP (CoOp repo lpclip/; methods.md §2.7).

Frozen, UNNORMALISED image features (``clip_model.visual(x)``, test transform: resize + centre
crop) of the few-shot training set; scikit-learn ``LogisticRegression(solver="lbfgs",
max_iter=1000)`` with the default L2 penalty. C is chosen on the few-shot validation set
(min(K, 4) shots per class, the split's ``val`` part) exactly as ``lpclip/linear_probe.py``:
first over {1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6} (first best on ties), then 8 steps of its
log-space bisection starting from [0.1·C*, 10·C*] (left wins ties); the classifier of the last
step is kept. No validation images: C = 1 (sklearn's default), recorded as ``c_search = 0``.

A linear probe has one weight row per trained class, so it cannot score classes it was not
fitted on: base-to-new evaluates it on the base classes only (``new_classes = False``; the
protocol plans no "new" target), and ``set_classnames`` with other classes is a user error.
Evaluation encodes the test images itself (``image_prompted``) because the shared feature cache
holds normalised features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cpbench.errors import UserError
from cpbench.methods.base import Method, Options, TrainingData

SEARCH = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


@dataclass
class LinearProbeOptions(Options):
    search_steps: int = 8
    max_iter: int = 1000


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(solver="lbfgs", max_iter=max_iter, C=c).fit(x, y)


def _acc(clf, x: np.ndarray, y: np.ndarray) -> float:
    return float((clf.predict(x) == y).mean())


def search_c(x, y, xv, yv, steps: int = 8, max_iter: int = 1000):
    """lpclip's C search; returns (classifier, C, [(C, val acc), ...])."""
    log = []
    accs = []
    for c in SEARCH:
        clf = _fit(x, y, c, max_iter)
        accs.append(_acc(clf, xv, yv))
        log.append((c, accs[-1]))
    c_peak = SEARCH[int(np.argmax(accs))]
    left, right = 0.1 * c_peak, 10.0 * c_peak
    clf_final, c_final = None, c_peak
    for _ in range(steps):
        clf_l, clf_r = _fit(x, y, left, max_iter), _fit(x, y, right, max_iter)
        acc_l, acc_r = _acc(clf_l, xv, yv), _acc(clf_r, xv, yv)
        log += [(left, acc_l), (right, acc_r)]
        if acc_l < acc_r:
            c_final, clf_final = right, clf_r
            left, right = 0.5 * (math.log10(right) + math.log10(left)), math.log10(right)
        else:
            c_final, clf_final = left, clf_l
            right, left = 0.5 * (math.log10(right) + math.log10(left)), math.log10(left)
        left, right = 10.0 ** left, 10.0 ** right
    if clf_final is None:
        clf_final = _fit(x, y, c_peak, max_iter)
    return clf_final, c_final, log


class LinearProbe(Method):
    name = "linear_probe"
    Options = LinearProbeOptions
    trainable = False
    closed_form = True
    image_prompted = True   # raw features: not the shared normalised-feature cache
    new_classes = False
    continual = False       # a closed-form classifier of one fixed class set

    def __init__(self, backbone, classnames, options: LinearProbeOptions, template="a photo of a {}."):
        super().__init__(backbone, classnames, options, template)
        self.fitted_classnames = list(classnames)
        n, e = len(classnames), backbone.embed_dim
        self.register_buffer("weight", torch.zeros(n, e))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("c_reg", torch.zeros(()))
        self.register_buffer("c_search", torch.zeros(()))

    def set_classnames(self, classnames):
        if list(classnames) != self.fitted_classnames:
            raise UserError("a linear probe only scores the classes it was fitted on (no new classes); "
                            "evaluate it on its training classes (base2new gives base only)")
        super().set_classnames(classnames)

    def n_learnable(self) -> int:
        return self.weight.numel() + self.bias.numel()

    # ------------------------------------------------------------------ fitting
    def fit_features(self, features, labels, val_features=None, val_labels=None) -> None:
        x, y = features.float().cpu().numpy().astype(np.float64), labels.cpu().numpy()
        n_cls = self.weight.shape[0]
        if len(np.unique(y)) < 2:
            raise UserError("a linear probe needs training images of at least 2 classes")
        if val_features is not None and len(val_features):
            clf, c, _ = search_c(x, y, val_features.float().cpu().numpy().astype(np.float64), val_labels.cpu().numpy(),
                                 self.options.search_steps, self.options.max_iter)
            searched = 1.0
        else:
            clf, c, searched = _fit(x, y, 1.0, self.options.max_iter), 1.0, 0.0
        w = torch.zeros(n_cls, x.shape[1], dtype=torch.float64)
        b = torch.full((n_cls,), -math.inf, dtype=torch.float64)   # a class never seen in training is never predicted
        coef, icpt = torch.from_numpy(clf.coef_), torch.from_numpy(clf.intercept_)
        cls = torch.as_tensor(clf.classes_, dtype=torch.long)
        if coef.shape[0] == 1:        # sklearn's binary form: decision > 0 -> classes_[1]
            w[cls[1]], b[cls[1]], b[cls[0]] = coef[0], icpt[0], 0.0
            w[cls[0]] = 0.0
        else:
            w[cls], b[cls] = coef, icpt
        with torch.no_grad():
            self.weight.copy_(w.to(self.weight.dtype))
            self.bias.copy_(b.to(self.bias.dtype))
            self.c_reg.fill_(c)
            self.c_search.fill_(searched)

    def fit(self, data: TrainingData) -> None:
        """Raw features of the training and validation images (test transform, no cache: the
        cache holds normalised features), then ``fit_features``."""
        from cpbench.engine.features import encode_all

        bs, workers = data.train.test_batch_size, data.train.num_workers

        def encode(items):
            return encode_all(self, items, data.image_root, data.device, data.precision, bs, workers)

        x, y = encode(data.train_items), torch.tensor([it.label for it in data.train_items])
        val = list(data.val_items)
        xv, yv = (encode(val), torch.tensor([it.label for it in val])) if val else (None, None)
        self.fit_features(x, y, xv, yv)

    # ------------------------------------------------------------------ evaluation
    def encode_images(self, images):
        return self.backbone.encode_image(images).float()

    def eval_context(self) -> Any:
        return None

    def logits_from_features(self, image_features, context):
        return image_features.float() @ self.weight.float().t() + self.bias.float()
