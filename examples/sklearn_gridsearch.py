"""scikit-learn's GridSearchCV on a scoopexec pool, through joblib.

    python examples/sklearn_gridsearch.py [--workers N] [--samples S] [--folds K]

``import scoopexec`` registers the joblib backend ``"scoop"``; inside
``joblib.parallel_config(backend="scoop", n_jobs=N)`` scikit-learn's own
parallel loops (here GridSearchCV's fits, one per candidate and fold) run on
a scoopexec pool of N workers -- or on the pool of an enclosing ``with
ScoopExecutor(hosts=[...])`` block, across machines.  Nothing else changes.
The data set is the handwritten digits that scikit-learn ships (no download);
the model an RBF support-vector classifier over a grid of C and gamma.  The
search is then repeated serially and the scores compared, candidate by
candidate.  Exits 1 if they differ.
"""

from __future__ import annotations

import argparse
import sys
import time

import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

import scoopexec  # noqa: F401  (registers the joblib backend "scoop")

GRID = {"svc__C": [0.1, 1.0, 10.0, 100.0], "svc__gamma": [1e-3, 1e-2, 1e-1]}


def search(samples: int, folds: int) -> GridSearchCV:
    X, y = load_digits(return_X_y=True)
    X, y = X[:samples], y[:samples]
    model = make_pipeline(StandardScaler(), SVC(kernel="rbf"))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    return GridSearchCV(model, GRID, cv=cv).fit(X, y)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--samples", type=int, default=1797, help="how many of the 1797 digits to use")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()

    t0 = time.perf_counter()
    with joblib.parallel_config(backend="scoop", n_jobs=args.workers):
        gs = search(args.samples, args.folds)
    parallel_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with joblib.parallel_config(backend="sequential"):
        serial = search(args.samples, args.folds)
    serial_s = time.perf_counter() - t0

    n_fits = len(gs.cv_results_["params"]) * args.folds
    print(f"best {gs.best_params_}: accuracy {gs.best_score_:.4f}")
    print(f"{n_fits} fits on {args.workers} workers: {parallel_s:.2f} s (pool start included); "
          f"serial: {serial_s:.2f} s")
    same = (
        gs.best_params_ == serial.best_params_
        and np.array_equal(gs.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"])
        and np.array_equal(gs.cv_results_["split0_test_score"], serial.cv_results_["split0_test_score"])
    )
    print(f"same answer as the serial run: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
