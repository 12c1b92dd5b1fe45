"""How sure a number of the report is: the seed part of every interval and paired test, combined
with the test-image bootstrap (``bootstrap.py``); the Holm correction and the combined McNemar
test of a paired comparison; how p values are written.

**Two noise sources, and why they add.** A cell statistic theta (a seed mean, HM, an Average over
datasets or targets, A − B of any of them) would move for two independent reasons:

- *test images*: every seed of every method was tested on the same n images of a test set; another
  sample of n images would move all of them together. The seed-to-seed spread cannot see this (all
  seeds share it). ``bootstrap.image_replicates`` resamples the images with the seeds held fixed
  (one draw per test set shared by every seed and method); se_img = the sd of theta over the
  replicates, HM and Averages recomputed in each.
- *seeds*: another seed is another few-shot draw and another training. theta is linearised in the
  per-(dataset, field) seed means m (delta method: weight 1 for a seed mean, 1/D for each part of an
  Average over D, ∂HM/∂B = 2N²/(B+N)² and ∂HM/∂N = 2B²/(B+N)², −w for B's cells in A − B). Cells
  that come from one training per seed (Base and New of a base-to-new training; the source and the
  targets of a cross-dataset training) and, in a paired test, A's and B's cells of the same seed
  form one *group*; its pseudo-value per seed y_s = Σ w·x_s keeps their correlation (Base/New of a
  seed move together; a seed pairs A with B). Each group's variance v_G = s²(y)/S_G has S_G − 1
  degrees of freedom; groups (trainings on different datasets) are independent, so
  se_seed² = Σ_G v_G. A method whose result does not depend on the seed (zero-shot) has no seed
  part and pairs with every seed of the other method.
- The interval is theta ± t(ν, 0.975)·sqrt(se_seed² + se_img²), the p value two-sided from the same
  t, with ν by Welch–Satterthwaite: the image part (thousands of images) counts as having infinitely
  many degrees of freedom, so ν grows from the seeds' S − 1 towards infinity as the image part
  dominates. Two calibrations, because plain Welch–Satterthwaite is liberal with few seeds: a
  seed variance that is small by chance (with 1 df, a quarter of the time below a tenth of its
  value) also sends ν up and the multiplier down together. (1) ν is computed with the seed part
  weighted ``SEED_DF_WEIGHT`` = 30 times, ν = (30·se_seed² + se_img²)² / Σ_G (30·v_G)²/(S_G − 1);
  the standard error itself is not changed, and with the image part negligible the weight cancels
  (ν = the seeds' own Welch–Satterthwaite df ν_s = se_seed⁴ / Σ_G v_G²/(S_G − 1)). (2) When
  ν_s < ``MIN_SEED_DF`` = 2 (a training with 2 seeds, or an Average ruled by one), ν = ν_s: no
  weighting keeps a 1-df variance honest in the tails. Measured (``benchmarks/report/
  df_calibration.py``, table in its README; false rejections over the nominal level at
  alpha = 0.05 to 0.001, where Holm's steps test): plain Welch–Satterthwaite reaches 56 times the
  level with 2 seeds, 16 times with 3 and 4.7 times with 5 (and its 95 % intervals covered 87 %
  of the time with 2); this rule stays at or below 1.01 times for every ratio of seed to image
  variance, with a 95 % interval 1.0-1.4 times the width of the one with the variance known when
  the seed part is at most a tenth of the image part (3 and 5 seeds); with 2 seeds a single
  training's interval is the t with 1 df: wide, as 2 seeds are.

Why this and not the percentile bootstrap over seeds that cpbench used before: drawing S of S seeds
with replacement has (S − 1)/S of the seed mean's variance and, with 2 seeds, only three distinct
means; with a normal quantile on top it ignores that a variance from S seeds is itself uncertain.
Simulated (``benchmarks/report/README.md``: 11 datasets × Base/New, 2,000 test images, seeds
±2 points), its 95 % intervals covered 83 %, 90 % and 93 % of the per-dataset cells with 2, 3 and
5 seeds, and null comparisons called 11.3, 4.5 and 3.0 of 22 cells significant with 1, 2 and 3
seeds; this scheme: 98-100 % coverage and at most 1 of 22. Student's t with S − 1 degrees of
freedom is the exact interval when seed effects are normal, and the calibrated Satterthwaite
combination keeps it so when the image part matters. The per-seed evaluation noise
(which borderline images a given classifier gets right) is in both parts, so the combination errs
slightly wide; the benchmark measures the coverage.

**One seed.** s² is undefined: the seed part cannot be estimated and no interval covers a new
training. ``--ci`` then shows the image-only interval marked as such, and a paired test says the
difference is untestable against seed noise, never "significant". Cells with no seed part at all
(seed-independent methods) get the image bootstrap's percentile interval and its p: the share of
replicates on the other side of 0, twice (two-sided); when no replicate crosses 0 the p is written
as a bound, "< 2/R" (the smallest non-zero value R replicates can give).

**Many datasets.** In a paired table the Average is the primary result (what the papers claim) and
is not adjusted; the per-dataset cells of each field are a family of tests, Holm-adjusted (a
dataset called significant holds with a 5 % family-wise error over the table's datasets). Holm
rather than Benjamini–Hochberg: a reader takes each "significant" cell as a claim of its own,
which the family-wise error protects; BH would only bound the share of false ones among them.

**McNemar, combined over seeds.** The Cochran–Mantel–Haenszel test with every (seed, image) pair
as a stratum: with b_s images only A gets right and c_s only B gets right on seed s,
χ² = (Σ b_s − Σ c_s)² / Σ (b_s + c_s), one degree of freedom. It sees the test images' noise
only (not the seeds'); it is shown beside the main test, labelled so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

LEVEL = 0.95
ALPHA = 1 - LEVEL
P_FLOOR = 1e-15   # a t or chi-square p below this is written "< 1e-15" (a float cannot hold it honestly)
SEED_DF_WEIGHT = 30.0  # the seed part's weight in the Welch–Satterthwaite df (module docstring)
MIN_SEED_DF = 2.0      # below this, the image part gets the seed part's df (module docstring)

SEEDS = "seeds"        # seed part estimated (S >= 2 everywhere): t interval
IMAGES = "images"      # no seed part (seed-independent): image bootstrap percentile interval
ONE_SEED = "one seed"  # a seed-dependent part with one seed: image-only interval, untestable
IMAGES_ONLY = "‡"      # marks an interval of ONE_SEED kind in the tables


@dataclass
class Estimate:
    """A statistic with its two error parts (see the module docstring)."""
    value: float
    images: np.ndarray                 # (R,) image-bootstrap replicates, seeds held fixed
    seed_var: float = 0.0              # se_seed² = Σ_G v_G
    seed_df_term: float = 0.0          # Σ_G v_G² / (S_G − 1)
    seeds: int = 0                     # the fewest seeds behind a seed-dependent group (0: none)

    @property
    def kind(self) -> str:
        return IMAGES if self.seeds == 0 else ONE_SEED if self.seeds == 1 else SEEDS

    @property
    def se_img(self) -> float:
        return float(np.std(self.images, ddof=1)) if len(self.images) > 1 else 0.0

    @property
    def se(self) -> float:
        return math.sqrt(self.seed_var + self.se_img ** 2)

    @property
    def df(self) -> float:
        return float(degrees_of_freedom(self.seed_var, self.seed_df_term, self.se_img ** 2))


def degrees_of_freedom(seed_var, seed_df_term, image_var, weight: float = SEED_DF_WEIGHT,
                       min_seed_df: float = MIN_SEED_DF):
    """The t's degrees of freedom (numbers or numpy arrays): the seed part's own Welch–Satterthwaite
    df ν_s = se_seed⁴ / Σ_G v_G²/(S_G − 1) when ν_s < ``min_seed_df``; otherwise Welch–Satterthwaite
    of seed and image parts with the seed part weighted ``weight`` times, (w·se_seed² + se_img²)² /
    (w² Σ_G v_G²/(S_G − 1)); inf without a seed part (module docstring)."""
    seed_var, term, image_var = (np.asarray(x, dtype=float) for x in (seed_var, seed_df_term, image_var))
    with np.errstate(divide="ignore", invalid="ignore"):
        own = np.where(term > 0, seed_var ** 2 / np.where(term > 0, term, 1.0), np.inf)
        boosted = (weight * seed_var + image_var) ** 2 / (weight * weight * np.where(term > 0, term, 1.0))
    below = own < min_seed_df * (1 - 1e-9)   # 3 seeds give exactly 2 (up to rounding): not below
    return np.where(term > 0, np.where(below, own, boosted), np.inf)


def seed_part(groups: list[np.ndarray]) -> tuple[float, float, int]:
    """``groups``: per independent group, its pseudo-values (one per seed). Returns (se_seed²,
    Σ v_G²/(S_G − 1), the fewest seeds); with a one-seed group the first two are 0 (not estimable:
    the caller reads the fewest seeds)."""
    var = term = 0.0
    fewest = min((len(y) for y in groups), default=0)
    if fewest < 2:
        return 0.0, 0.0, fewest
    for y in groups:
        v = float(np.var(y, ddof=1)) / len(y)
        var += v
        term += v * v / (len(y) - 1)
    return var, term, fewest


# scipy.special, not scipy.stats: the same functions, 0.26 s of import instead of 1.3 s
def _t_quantile(df: float, q: float) -> float:
    from scipy.special import ndtri, stdtrit

    return float(ndtri(q) if math.isinf(df) else stdtrit(df, q))


def _t_sf(x: float, df: float) -> float:
    from scipy.special import ndtr, stdtr

    return float(ndtr(-x) if math.isinf(df) else stdtr(df, -x))


def percentile(reps: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    if reps is None or len(reps) == 0 or not np.all(np.isfinite(reps)):
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(reps, [tail, 100 - tail])
    return float(low), float(high)


def interval(est: Estimate, bounds: tuple[float, float] = (0.0, 100.0),
             level: float = LEVEL) -> tuple[float, float] | None:
    """The 95 % interval: t-based with a seed part, the image bootstrap's percentile interval
    without one (or with one seed: then it covers the test images only). Clipped to ``bounds``
    (an accuracy lies in [0, 100]; clipping never lowers coverage)."""
    if est is None or not math.isfinite(est.value) or not np.all(np.isfinite(est.images)):
        return None
    if est.kind != SEEDS:
        ci = percentile(est.images, level)
    else:
        half = _t_quantile(est.df, 1 - (1 - level) / 2) * est.se
        ci = (est.value - half, est.value + half)
    if ci is None:
        return None
    return max(bounds[0], ci[0]), min(bounds[1], ci[1])


@dataclass
class Paired:
    """A paired difference A − B and its test. ``kind``: ``seeds`` (t test, seed and image parts),
    ``images`` (both sides seed-independent: image bootstrap), ``one seed`` (untestable against
    seed noise; ``low``/``high`` cover the test images only, ``p`` is None)."""
    delta: float
    low: float
    high: float
    kind: str
    p: float | None = None
    p_floor: float = 0.0               # > 0: p is only known to lie below p_floor
    df: float = math.inf
    seeds: int = 0
    p_adjusted: float | None = None    # Holm, across the datasets of a table's field (None: not adjusted)
    adjusted_floor: float = 0.0
    significant: bool | None = None    # None: untestable

    @property
    def testable(self) -> bool:
        return self.kind != ONE_SEED


def test(est: Estimate, level: float = LEVEL) -> Paired | None:
    """The paired test of a difference A − B (``est`` of A − B), before any multiple-test correction."""
    ci = interval(est, (-100.0, 100.0), level)
    if ci is None:
        return None
    d = est.value
    if est.kind == ONE_SEED:
        return Paired(d, *ci, kind=ONE_SEED, seeds=1)
    if est.kind == IMAGES:
        p, floor = bootstrap_p(est.images)
        return Paired(d, *ci, kind=IMAGES, p=p, p_floor=floor, significant=_below(p, floor, 1 - level))
    se, df = est.se, est.df
    if se == 0:
        p = 1.0 if d == 0 else 0.0
    else:
        p = min(1.0, 2 * _t_sf(abs(d) / se, df))
    floor = P_FLOOR if p < P_FLOOR else 0.0
    return Paired(d, *ci, kind=SEEDS, p=max(p, floor) if floor else p, p_floor=floor, df=df, seeds=est.seeds,
                  significant=_below(p, floor, 1 - level))


def _below(p: float, floor: float, alpha: float) -> bool:
    """Whether p < alpha holds (a bounded p: when its bound is at most alpha)."""
    return bool(floor <= alpha) if floor else p < alpha


def bootstrap_p(reps: np.ndarray) -> tuple[float, float]:
    """Two-sided p of 'no difference' from replicates of a difference: twice the smaller share on
    either side of 0. (p, floor): floor = 2/R when no replicate reaches 0 (p < 2/R), else 0."""
    r = len(reps)
    below, above = np.mean(reps <= 0), np.mean(reps >= 0)
    p = float(min(1.0, 2 * min(below, above)))
    return (2.0 / r, 2.0 / r) if p == 0 else (p, 0.0)


def holm(cells: list[Paired]) -> None:
    """Holm's step-down adjustment of the testable cells' p values (in place: ``p_adjusted`` and
    ``significant``). A bounded p (``p < floor``) enters as its bound, so the adjusted value is a
    bound too (marked the same way) when the step that sets it came from a bounded p."""
    tested = [c for c in cells if c.testable and c.p is not None]
    m = len(tested)
    order = sorted(tested, key=lambda c: max(c.p, c.p_floor))
    running, running_bound = 0.0, False
    for i, c in enumerate(order):
        step = min(1.0, (m - i) * max(c.p, c.p_floor))
        if step >= running:
            running, running_bound = step, bool(c.p_floor) and step < 1.0
        c.p_adjusted = running
        c.adjusted_floor = running if running_bound else 0.0
        c.significant = running < ALPHA if not running_bound else running <= ALPHA


@dataclass
class McNemar:
    """McNemar's test combined over seeds (Cochran–Mantel–Haenszel, (seed, image) pairs as strata)."""
    a_only: int                                # images only A gets right, summed over the seeds
    b_only: int
    p: float
    p_floor: float = 0.0
    per_seed: tuple[tuple[int, int, int], ...] = field(default=())  # (seed, a_only, b_only)


def mcnemar(pairs: list[tuple[int, np.ndarray, np.ndarray]]) -> McNemar:
    """``pairs``: (seed, A correct, B correct) per seed, the same images in the same order."""
    from scipy.special import chdtrc

    per_seed = tuple((s, int(np.sum(a & ~b)), int(np.sum(~a & b))) for s, a, b in pairs)
    b = sum(x[1] for x in per_seed)
    c = sum(x[2] for x in per_seed)
    p = 1.0 if b + c == 0 else float(chdtrc(1, (b - c) ** 2 / (b + c)))
    floor = P_FLOOR if p < P_FLOOR else 0.0
    return McNemar(b, c, max(p, floor), floor, per_seed)


# ----------------------------------------------------------------------------- writing p values


def _fmt(x: float) -> str:
    return f"{x:.3f}" if x >= 0.001 else f"{x:.0e}" if x < 1e-4 else f"{x:.4f}"


def p_text(p: float, floor: float = 0.0, name: str = "p") -> str:
    """The tables' form: ``p = 0.012``, ``p < 0.001`` below 0.001, ``p < 0.004`` for a bound (from
    500 bootstrap replicates none of which crossed 0) above 0.001."""
    if floor:
        return f"{name} < {_fmt(max(floor, 0.001))}"
    return f"{name} < 0.001" if p < 0.001 else f"{name} = {p:.3f}"


def p_record(p: float | None, floor: float = 0.0):
    """The p of a csv/json record: the number, or ``"< 0.001"`` when it is only a bound."""
    if p is None:
        return None
    return f"< {_fmt(floor)}" if floor else p
