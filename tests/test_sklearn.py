"""The scikit-learn estimators: scikit-learn's own checks, MLP's rules, and where users put them."""

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_classification, make_friedman1  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastbp  # noqa: E402
from fastbp.sklearn import FastBPClassifier, FastBPRegressor  # noqa: E402

# Small and quick: the checks fit these dozens of times on ~100-row data sets.
CHECKED = [FastBPRegressor(hidden_layer_sizes=(8,), max_iter=100, learning_rate_init=0.01,
                           random_state=0),
           FastBPClassifier(hidden_layer_sizes=(8,), max_iter=100, learning_rate_init=0.01,
                            random_state=0)]
# Checks expected to fail, each with the reason next to it: none.
EXPECTED_FAILURES = {}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(CHECKED, expected_failed_checks=lambda est: EXPECTED_FAILURES)
def test_scikit_learn_checks(estimator, check):
    check(estimator)
