"""How the seeds-plus-images t of ``cpbench/results/significance.py`` holds its level, as a function
of how large the seed part is against the image part, for 1, 2 and 4 seed degrees of freedom (2,
3 and 5 seeds of one training), under several rules for its degrees of freedom (issue 26).

    python benchmarks/report/df_calibration.py

Model: the estimate's error is N(0, v_s + v_i); v_i (the image part, from thousands of images) is
known, v_s (the seed part of a seed mean) estimated as v_s·chi²_k / k; r = v_s / v_i. A test at
level alpha rejects when |error| > t(nu, 1 − alpha/2)·sqrt(v̂_s + v_i). For each rule and r: the
false-rejection rate over alpha at alpha = 0.05, 0.01, 0.0045 (Holm's first step over 11
datasets) and 0.001, the worst of the four printed (1.00 = exact; above 1 = liberal), and the mean
95 % half-width over that of the interval with the variance known (1.96·sqrt(v_s + v_i)). 400,000
draws per cell. Rules, all through ``significance.degrees_of_freedom``: plain Welch–Satterthwaite
(weight 1, no floor), the seed part weighted 10 or 30 times, and the seeds' own df only (the image
part gets no extra df), and cpbench's rule (weight ``SEED_DF_WEIGHT``, and the seeds' own df below
``MIN_SEED_DF``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import stdtrit

from cpbench.results import significance

DRAWS = 400_000
RATIOS = (0.01, 0.1, 0.3, 1, 3, 10, 30, 100)
ALPHAS = (0.05, 0.01, 0.0045, 0.001)
RULES = {"plain Welch–Satterthwaite": dict(weight=1.0, min_seed_df=0.0),
         "seed part weighted 10": dict(weight=10.0, min_seed_df=0.0),
         "seed part weighted 30": dict(weight=30.0, min_seed_df=0.0),
         "seeds' own df": dict(weight=1.0, min_seed_df=math.inf),
         "cpbench": dict(weight=significance.SEED_DF_WEIGHT, min_seed_df=significance.MIN_SEED_DF)}


def check_against_the_report() -> None:
    """The vectorised rule is the report's: one Estimate per seed df through significance.interval."""
    g = np.random.default_rng(1)
    for k in (1, 2, 4):
        y = g.normal(0, 2, k + 1)
        images = g.normal(0, 1.0, 4000)
        vs = float(np.var(y, ddof=1)) / (k + 1)
        low, high = significance.interval(significance.Estimate(50.0, images, vs, vs * vs / k, k + 1))
        nu = significance.degrees_of_freedom(vs, vs * vs / k, float(np.var(images, ddof=1)))
        ours = float(stdtrit(min(float(nu), 1e12), 0.975)) * math.sqrt(vs + float(np.var(images, ddof=1)))
        assert abs((high - low) / 2 - ours) < 1e-9, (k, high - low, ours)
    print("the rule below is significance.interval's (checked at 1, 2, 4 df)\n")


def main() -> None:
    check_against_the_report()
    g = np.random.default_rng(0)
    print("| seed df | rule | " + " | ".join(f"r = {r}" for r in RATIOS) + " |")
    print("|---:|---|" + "---:|" * len(RATIOS))
    for k in (1, 2, 4):
        for name, rule in RULES.items():
            cells = []
            for r in RATIOS:
                err = g.standard_normal(DRAWS) * np.sqrt(r + 1.0)
                vs = r * g.chisquare(k, DRAWS) / k
                nu = np.minimum(significance.degrees_of_freedom(vs, vs * vs / k, 1.0, **rule), 1e12)
                se = np.sqrt(vs + 1.0)
                worst = max(np.mean(np.abs(err) > stdtrit(nu, 1 - a / 2) * se) / a for a in ALPHAS)
                width = np.mean(stdtrit(nu, 0.975) * se) / (1.96 * np.sqrt(r + 1))
                cells.append(f"{worst:.2f} ({width:.2f})")
            print(f"| {k} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
