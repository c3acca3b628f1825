"""scikit-learn estimators over :class:`fastbp.Network`: FastBPRegressor and FastBPClassifier.

Drop-in counterparts of scikit-learn's ``MLPRegressor`` / ``MLPClassifier``:
the parameters that exist in both are named and defaulted as there, the
fitted attributes carry scikit-learn's names, and convergence (``tol``,
``n_iter_no_change``, ``ConvergenceWarning``) and early stopping (a held-out
``validation_fraction`` scored with R² / accuracy, best weights restored)
follow ``MLP``'s rules.  Training itself is one ``Network.fit`` call with
Keras's semantics; the MLP rules run as a callback after each epoch.

This module imports scikit-learn; ``import fastbp`` never imports it (install
it with ``pip install 'fastbp[sklearn]'``).
"""

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from ._backends._codes import ACTIVATIONS
from .callbacks import Callback
from .network import Network
from .optimizers import SGD, Adam, RMSprop

__all__ = ["FastBPRegressor", "FastBPClassifier"]

_SOLVERS = ("sgd", "adam", "rmsprop")
_HIDDEN = tuple(a for a in ACTIVATIONS if a != "softmax")
# scikit-learn's MLP calls the linear activation "identity"
_ALIASES = {"identity": "linear", "logistic": "sigmoid"}


def _fail(name, expected, found, fix):
    raise ValueError(f"{name}: expected {expected}; found {found!r}. {fix}")


def _mlp_initial_weights(rng, layers, activation, dtype):
    """MLP's initial weights: ``[kernel, bias, ...]`` uniform in ``±sqrt(f / (fan_in + fan_out))``.

    ``f`` is 6, or 2 for sigmoid ("logistic") hidden units; each layer's
    kernel and then its biases are drawn from ``rng`` (a ``RandomState``) in
    float64 and rounded to ``dtype``, as ``MLPRegressor._init_coef`` does, so
    the same ``random_state`` gives MLP's starting point exactly.  (Keras, and
    ``fastbp.Network``, start the biases at zero.)
    """
    factor = 2.0 if activation == "sigmoid" else 6.0
    weights = []
    for fan_in, fan_out in zip(layers[:-1], layers[1:]):
        bound = np.sqrt(factor / (fan_in + fan_out))
        weights.append(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype, copy=False))
        weights.append(rng.uniform(-bound, bound, fan_out).astype(dtype, copy=False))
    return weights


class _MLPRules(Callback):
    """MLP's stopping rules after each epoch: ``tol`` / ``n_iter_no_change`` and early stopping.

    Records ``loss_curve_`` (and ``validation_scores_``) on the estimator;
    keeps the best weights when early stopping, which the estimator restores.
    """

    def __init__(self, estimator, validation):
        self.est = estimator
        self.validation = validation
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        est = self.est
        loss = float(logs["loss"]) * est._scales()[0]
        est.loss_curve_.append(loss)
        est.n_iter_ += 1
        est.t_ += est._rows
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {loss:.8f}")
        if self.validation is not None:
            score = est._score_on(self.network, *self.validation)
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            if score < est.best_validation_score_ + est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                self.best_weights = self.network.get_weights()
        else:
            if loss > est.best_loss_ - est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if loss < est.best_loss_:
                est.best_loss_ = loss
        if est._no_improvement_count > est.n_iter_no_change:
            est._converged = True
            self.network.stop_training = True


class _FastBPBase(BaseEstimator):
    """What both estimators share: parameters, checks, the training loop."""

    _losses = ()

    def _store(self, params):
        # scikit-learn's rule: __init__ stores the parameters as given; fit checks them
        for name, value in params.items():
            if name not in ("self", "__class__"):
                setattr(self, name, value)

    # ------------------------------------------------------------------ checks
    def _check_params(self):
        """Every parameter, before anything changes; returns ``(hidden sizes, activation)``."""
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral) and not isinstance(sizes, bool):
            sizes = [sizes]
        try:
            sizes = list(sizes)
        except TypeError:
            sizes = None
        if sizes is None or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                                    and s >= 1 for s in sizes):
            _fail("hidden_layer_sizes", "a tuple of positive integers, e.g. (100,)",
                  self.hidden_layer_sizes, "Pass e.g. hidden_layer_sizes=(64, 64).")
        activation = _ALIASES.get(self.activation, self.activation)
        if activation not in _HIDDEN:
            _fail("activation", f"one of {', '.join(map(repr, _HIDDEN))} (or 'identity', "
                  "'logistic')", self.activation, "Pass e.g. activation='relu'.")
        if self.solver not in _SOLVERS:
            _fail("solver", f"one of {', '.join(map(repr, _SOLVERS))}", self.solver,
                  "Pass e.g. solver='adam'. ('lbfgs' is not offered: fastbp trains by "
                  "backpropagation with stochastic optimizers only.)")
        loss = getattr(self, "loss", None)  # the classifier's follows from the targets
        if loss not in self._losses:
            _fail("loss", f"one of {', '.join(map(repr, self._losses))}", loss,
                  f"Pass e.g. loss={self._losses[0]!r}.")
        bs = self.batch_size
        if not (bs == "auto" or (isinstance(bs, numbers.Integral) and not isinstance(bs, bool)
                                 and bs >= 1)):
            _fail("batch_size", "'auto' or an integer >= 1", bs,
                  "Pass e.g. batch_size=200 or batch_size=1 (per-sample).")
        for name, low, high in (("learning_rate_init", 0.0, None), ("tol", None, None),
                                ("epsilon", 0.0, None)):
            value = getattr(self, name)
            if (not isinstance(value, numbers.Real) or isinstance(value, bool)
                    or not np.isfinite(value) or (low is not None and value <= low)):
                _fail(name, "a finite number" + (" > 0" if low is not None else ""), value,
                      f"Pass e.g. {name}={getattr(type(self)(), name)!r}.")
        for name in ("momentum", "beta_1", "beta_2", "validation_fraction"):
            value = getattr(self, name)
            if (not isinstance(value, numbers.Real) or isinstance(value, bool)
                    or not 0 <= value < 1 or (name == "validation_fraction" and value == 0)):
                _fail(name, "a number in (0, 1)" if name == "validation_fraction"
                      else "a number in [0, 1)", value,
                      f"Pass e.g. {name}={getattr(type(self)(), name)!r}.")
        for name in ("max_iter", "n_iter_no_change"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                _fail(name, "an integer >= 1", value, f"Pass e.g. {name}=200.")
        workers = self.workers
        if (not isinstance(workers, numbers.Integral) or isinstance(workers, bool)
                or not (workers >= 1 or workers == -1)):
            _fail("workers", "an integer >= 1, or -1 for every usable core", workers,
                  "Pass e.g. workers=2 or workers=-1.")
        for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                _fail(name, "True or False", getattr(self, name), f"Pass {name}=True or False.")
        return [int(s) for s in sizes], activation

    def _scales(self):
        """``(loss, gradient)``: MLP's loss and gradient over the network's (Keras's).

        1 where they agree (one output; softmax).  The network's losses average
        over the outputs; MLP's squared error is half that mean, yet its
        gradient (``p - y`` per output) is that of half the *sum*: ``k / 2``
        times Keras's ``mse`` gradient for ``k`` outputs.  MLP's log-loss of
        ``k`` sigmoid outputs sums over them: ``k`` times binary cross-entropy.
        """
        return 1.0, 1.0

    def _optimizer(self):
        """The network's optimizer, taking MLP's steps for MLP's loss (see :meth:`_scales`).

        The network's gradient is ``1 / s`` times MLP's.  SGD's step is linear
        in the gradient: a learning rate times ``s`` takes MLP's steps.  Adam's
        and RMSprop's steps do not depend on the gradient's scale except
        through epsilon, added to ``sqrt(v)`` (Adam: scaled by ``1 / s``) or to
        ``v`` (RMSprop: by ``1 / s**2``).  With one output ``s`` is 1/2 or 1, a
        power of two, so the steps are MLP's exactly, not just up to rounding.
        """
        scale = self._scales()[1]
        lr, eps = float(self.learning_rate_init), float(self.epsilon)
        if self.solver == "sgd":
            return SGD(lr * scale, momentum=float(self.momentum),
                       nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)
        if self.solver == "adam":
            return Adam(lr, beta_1=float(self.beta_1), beta_2=float(self.beta_2),
                        epsilon=eps / scale)
        # fastbp's own solver: Keras's RMSprop with its rho default (MLP has no rmsprop)
        return RMSprop(lr, epsilon=eps / scale ** 2)

    @staticmethod
    def _refuse_fit_params(fit_params):
        if fit_params:
            name = next(iter(fit_params))
            raise TypeError(f"fit: expected only X and y; found the argument {name!r}. "
                            + ("fastbp has no per-sample weights: resample or repeat rows "
                               "instead of passing sample_weight."
                               if name == "sample_weight" else "Remove it."))

    def _validate_X_y(self, X, y, reset):
        """``(X, y)``: X checked (a np.memmap kept as it is, so that fit streams it)."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y "
                             "is None. Pass the targets: fit(X, y).")
        if isinstance(X, np.memmap):
            # no conversion and no full pass over the file: the network checks each
            # streamed block; scikit-learn records the feature count (and names)
            validate_data(self, X, reset=reset, skip_check_array=True)
            if X.ndim != 2:
                raise ValueError(f"X: expected a 2-D array; found shape {X.shape}.")
            if X.dtype.kind not in "biuf":
                raise TypeError(f"X: expected real numbers; found dtype {X.dtype}.")
            if X.shape[0] < 1:
                raise ValueError("X: expected at least one sample; found 0. Pass some data.")
            if not reset and X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is "
                                 f"expecting {self.n_features_in_} features as input.")
            return X, self._check_y(y)
        X = validate_data(self, X, reset=reset, dtype=np.dtype(self.dtype), order="C",
                          ensure_min_samples=1)
        return X, self._check_y(y)

    # ------------------------------------------------------------------ training
    def _new_network(self, n_in, n_out, hidden, activation, seed):
        output, loss = self._output(n_out)
        return Network([n_in, *hidden, n_out], activations=activation, output_activation=output,
                       loss=loss, dtype=self.dtype, backend=self.backend, seed=seed)

    def _fit(self, X, y, incremental):
        # A call that fails leaves the fitted attributes as they were (n_features_in_,
        # classes_ and the rest are set while the data is checked, before training).
        saved = dict(self.__dict__)
        try:
            return self._fit_checked(X, y, incremental, saved)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    def _fit_checked(self, X, y, incremental, saved):
        hidden, activation = self._check_params()
        first = incremental and not hasattr(self, "network_")
        X, y = self._validate_X_y(X, y, reset=first or not incremental)
        Y = self._encode(y, fit=first or not incremental)
        n_out = Y.shape[1] if Y.ndim == 2 else self._n_network_outputs()
        rng = check_random_state(self.random_state)
        keep = hasattr(self, "network_") and (incremental or self.warm_start)
        if keep and not incremental and "classes_" in saved and not np.array_equal(
                np.asarray(saved["classes_"]), np.asarray(self.classes_)):
            raise ValueError(f"warm start: expected y with the classes of the previous fit, "
                             f"{np.asarray(saved['classes_']).tolist()}; found "
                             f"{self.classes_.tolist()}. Fit a new estimator or set "
                             "warm_start=False.")
        if keep and (self.network_.layers != (X.shape[1], *hidden, n_out)):
            raise ValueError(f"warm start: expected data for the fitted network "
                             f"{list(self.network_.layers)}; found {X.shape[1]} features and "
                             f"{n_out} outputs for hidden sizes {hidden}. Fit a new estimator "
                             "or set warm_start=False.")
        if keep:
            network = self.network_
        else:  # drawn first, as MLP draws them: the split below then draws what MLP's does
            initial = _mlp_initial_weights(rng, [X.shape[1], *hidden, n_out], activation,
                                           self.dtype)
        validation = None
        early = self.early_stopping and not incremental
        if early:
            X, Y, validation = self._split(X, Y, y, rng)
        if not keep:  # the network's own seed: its shuffles (MLP's are not reproduced)
            network = self._new_network(X.shape[1], n_out, hidden, activation,
                                        int(rng.randint(np.iinfo(np.int32).max)))
            network.set_weights(initial)
        n = X.shape[0]
        batch = min(200, n) if self.batch_size == "auto" else min(int(self.batch_size), n)
        if not keep or not incremental and not self.warm_start:
            self.loss_curve_ = []
            self.n_iter_ = 0
            self.t_ = 0
            self._no_improvement_count = 0
            self.best_loss_ = None if early else np.inf
            self.validation_scores_ = [] if early else None
            self.best_validation_score_ = -np.inf if early else None
        elif early and self.validation_scores_ is None:  # warm start into early stopping
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
        if not early and self.best_loss_ is None:
            self.best_loss_ = np.inf
        self._rows = n
        self._network_outputs = n_out
        self._converged = False
        rules = _MLPRules(self, validation)
        epochs = 1 if incremental else int(self.max_iter)
        # MLP's warm start keeps the weights and starts its solver afresh (partial_fit
        # continues both): a network without an optimizer binds the new one with zero state
        fresh_solver = keep and not incremental
        previous_optimizer = network.optimizer
        if fresh_solver:
            network.optimizer = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # "auto chose ...": not news
                network.fit(X, Y, epochs=epochs, batch_size=batch, optimizer=self._optimizer(),
                            shuffle=bool(self.shuffle), callbacks=[rules], verbose=0,
                            workers=int(self.workers))
        except BaseException:
            if network.optimizer is None:  # fit rolled its state back; the optimizer too
                network.optimizer = previous_optimizer
            raise
        if early and rules.best_weights is not None:
            network.set_weights(rules.best_weights)
        self.network_ = network
        self.n_outputs_ = self._n_outputs(Y)
        if not incremental and not self._converged:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                          "and the optimization hasn't converged yet.", ConvergenceWarning)
        return self

    def _split(self, X, Y, y, rng):
        """MLP's validation split (stratified for a classifier); a memmap keeps its tail."""
        if isinstance(X, np.memmap):
            # random rows of a file would be copied into memory: take the last ones
            cut = X.shape[0] - max(1, int(round(X.shape[0] * self.validation_fraction)))
            if cut < 1:
                raise ValueError("early_stopping: validation_fraction leaves no training rows.")
            return X[:cut], Y[:cut], (X[cut:], y[cut:])
        stratify = y if self._stratify(y) else None
        X_train, X_val, Y_train, _, _, y_val = train_test_split(
            X, Y, y, random_state=rng, test_size=self.validation_fraction, stratify=stratify)
        return np.ascontiguousarray(X_train), Y_train, (np.ascontiguousarray(X_val), y_val)

    def _stratify(self, y):
        return False

    # ------------------------------------------------------------------ fitted model
    @property
    def coefs_(self):
        """Kernel of each layer, ``(inputs, units)``, as MLP's ``coefs_``."""
        check_is_fitted(self, "network_")
        return self.network_.get_weights()[0::2]

    @property
    def intercepts_(self):
        """Bias of each layer, ``(units,)``, as MLP's ``intercepts_``."""
        check_is_fitted(self, "network_")
        return self.network_.get_weights()[1::2]

    def _outputs(self, X):
        check_is_fitted(self, "network_")
        X = validate_data(self, X, reset=False, dtype=np.dtype(self.dtype), order="C")
        return self.network_.predict(X, workers=int(self.workers))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.target_tags.multi_output = True
        return tags


class FastBPRegressor(RegressorMixin, _FastBPBase):
    """A dense network trained by backpropagation, as scikit-learn's ``MLPRegressor``.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default (100,)
        Units of each hidden layer.
    activation : {"relu", "tanh", "sigmoid", "linear"}, default "relu"
        Hidden activation (MLP's "logistic" and "identity" are accepted).
    solver : {"adam", "sgd", "rmsprop"}, default "adam"
        Keras's Adam, SGD (with ``momentum`` and ``nesterovs_momentum``) or
        RMSprop (``rho=0.9``; fastbp's, MLP has none).
    batch_size : int or "auto", default "auto"
        ``min(200, n_samples)``; 1 trains per sample.
    learning_rate_init : float, default 0.001
        A constant learning rate (MLP's schedules are not offered).
    max_iter : int, default 200
        Epochs.
    shuffle : bool, default True
    random_state : int, RandomState or None
        Seeds the initial weights, the validation split and the shuffles.
        The initial weights and the split are MLP's for the same
        ``random_state`` (Glorot-uniform kernels and biases); the shuffles
        are fastbp's own.
    tol : float, default 1e-4
    verbose : bool, default False
    warm_start : bool, default False
        Continue from the fitted weights, with the solver's state started
        afresh, as MLP does (``partial_fit`` continues the solver state too).
    momentum, nesterovs_momentum : float, bool
        For ``solver="sgd"``.
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the rows, stop when their R² has
        not improved by ``tol`` for ``n_iter_no_change`` epochs and restore
        the best weights.
    validation_fraction : float, default 0.1
    beta_1, beta_2, epsilon : float
        Adam's (``epsilon`` also RMSprop's).
    n_iter_no_change : int, default 10
    loss : {"squared_error", "mse", "mae", "huber"}, default "squared_error"
        ``squared_error`` is MLP's: half the mean squared error, the value in
        ``loss_curve_`` and the objective the solver's parameters apply to
        (the same SGD steps as ``MLPRegressor`` at the same
        ``learning_rate_init``).  ``mse``, ``mae`` and ``huber`` are fastbp's
        (Keras's) losses as they are: ``mse``'s gradient is twice
        ``squared_error``'s, so plain SGD takes twice the step.
    backend : str, default "auto"
        fastbp backend (``"numba"``, ``"cython"``, ``"numpy"``, ``"cuda"``).
    dtype : {"float64", "float32"}, default "float64"
    workers : int, default 1
        Threads for ``fit`` and ``predict`` (-1: every usable core); see
        :meth:`fastbp.Network.fit` (per-sample and small batches train by
        local SGD, which is not the one-thread model; batches of 64 and more
        are split exactly).

    Attributes
    ----------
    network_ : fastbp.Network
        The trained network.
    loss_curve_ : list of float
        The training loss of each epoch.
    validation_scores_ : list of float or None
        R² on the held-out rows per epoch (with ``early_stopping``).
    best_loss_ : float or None
        Lowest training loss (None with ``early_stopping``).
    best_validation_score_ : float or None
    n_iter_ : int
        Epochs run.
    t_ : int
        Training samples seen.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        When fitted on a DataFrame with string column names.
    n_outputs_ : int
    coefs_, intercepts_ : list of ndarray
        Kernels ``(inputs, units)`` and biases per layer.

    Notes
    -----
    MLP's ``alpha`` (L2 penalty) is not offered: fastbp has no weight
    penalty, and accepting ``alpha`` to ignore it would train another model
    than asked.  ``sample_weight`` is refused for the same reason.
    """

    _losses = ("squared_error", "mse", "mae", "huber")

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 batch_size="auto", learning_rate_init=0.001, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 loss="squared_error", backend="auto", dtype="float64", workers=1):
        self._store(locals())

    def fit(self, X, y, **fit_params):
        """Train for up to ``max_iter`` epochs (MLP's convergence rules); returns self.

        A ``np.memmap`` ``X`` (e.g. ``np.load("X.npy", mmap_mode="r")``) is
        streamed from disk, never copied into memory.
        """
        self._refuse_fit_params(fit_params)
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y):
        """One epoch over the given rows, continuing the network and its optimizer state."""
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """Predictions, shape ``(n_samples,)`` for one output, else ``(n_samples, n_outputs)``."""
        out = self._outputs(X)
        return out.ravel() if self._y_1d else out

    def _check_y(self, y):
        if isinstance(y, np.memmap) and y.dtype.kind == "f":
            return y  # streamed with X, checked block by block
        y = np.asarray(y)
        if y.dtype.kind not in "biuf":
            try:  # numbers held as objects are numbers; strings are not
                y = y.astype(np.float64) if y.dtype.kind == "O" else None
            except (TypeError, ValueError):
                y = None
            if y is None:
                raise ValueError("y: expected numbers for a regressor; found targets that are "
                                 "not numbers (e.g. strings). Convert them to floats (for class "
                                 "labels use FastBPClassifier).")
        if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] < 1):
            raise ValueError(f"y: expected shape (n_samples,) or (n_samples, n_outputs); "
                             f"found {y.shape}.")
        if not np.isfinite(y).all():
            raise ValueError("y: expected finite numbers; found NaN or infinity. Remove or "
                             "impute those rows first.")
        return y

    def _encode(self, y, fit):
        if fit:
            self._y_1d = y.ndim == 1
        return y.reshape(-1, 1) if y.ndim == 1 else y

    def _n_outputs(self, Y):
        return Y.shape[1]

    def _output(self, n_out):
        return "linear", "mse" if self.loss == "squared_error" else self.loss

    def _scales(self):
        if self.loss != "squared_error":
            return 1.0, 1.0
        return 0.5, 0.5 * self._network_outputs

    def _score_on(self, network, X, y):
        return r2_score(y, network.predict(X).reshape(np.shape(y)))


class FastBPClassifier(ClassifierMixin, _FastBPBase):
    """A dense network classifier trained by backpropagation, as ``MLPClassifier``.

    Parameters are :class:`FastBPRegressor`'s (without ``loss``: it follows
    from the targets, and is MLP's log-loss in each case) and score early
    stopping with accuracy.  Outputs:

    - two classes: one sigmoid output, binary cross-entropy;
    - more classes: a softmax output per class, categorical cross-entropy
      (computed from the logits, as Keras does);
    - multi-label (a 0/1 indicator matrix): a sigmoid output per label,
      binary cross-entropy.

    Attributes
    ----------
    classes_ : ndarray or list of ndarray
        The class labels (per output for multi-label data: ``[0, 1]``).
    network_, loss_curve_, validation_scores_, best_loss_, best_validation_score_,
    n_iter_, t_, n_features_in_, feature_names_in_, n_outputs_, coefs_, intercepts_
        As :class:`FastBPRegressor`'s.

    Notes
    -----
    As ``MLPClassifier``, no ``decision_function``: use :meth:`predict_proba`.
    MLP's ``alpha`` is not offered (fastbp has no weight penalty).
    """

    _losses = (None,)

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 batch_size="auto", learning_rate_init=0.001, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 backend="auto", dtype="float64", workers=1):
        self._store(locals())

    def fit(self, X, y, **fit_params):
        """Train for up to ``max_iter`` epochs (MLP's convergence rules); returns self."""
        self._refuse_fit_params(fit_params)
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y, classes=None):
        """One epoch over the given rows; ``classes`` (every label) on the first call."""
        if not hasattr(self, "network_"):
            if classes is None:
                raise ValueError("partial_fit: expected classes= (all the labels) on the first "
                                 "call; found None. Pass e.g. classes=np.unique(y_all).")
            self._partial_classes = np.asarray(classes)
        elif classes is not None and not np.array_equal(
                np.asarray(classes), np.asarray(self.classes_)):
            raise ValueError(f"partial_fit: expected classes={self.classes_.tolist()} as on "
                             f"the first call; found {np.asarray(classes).tolist()}.")
        try:
            return self._fit(X, y, incremental=True)
        except BaseException:
            if not hasattr(self, "network_"):  # a failed first call keeps no classes
                self.__dict__.pop("_partial_classes", None)
            raise

    def _check_y(self, y):
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()
        if y.ndim not in (1, 2):
            raise ValueError(f"y: expected shape (n_samples,), or (n_samples, n_labels) for "
                             f"multi-label targets; found {y.shape}.")
        return y

    def _encode(self, y, fit):
        if fit:
            kind = type_of_target(y)
            if kind not in ("binary", "multiclass", "multilabel-indicator"):
                raise ValueError(f"Unknown label type: y: expected class labels (binary, "
                                 "multiclass or a multi-label indicator matrix); found targets "
                                 f"of type {kind!r}. Use "
                                 "FastBPRegressor for continuous targets.")
            self._multilabel = kind == "multilabel-indicator"
            partial = getattr(self, "_partial_classes", None)
            if self._multilabel:
                self._binarizer = LabelBinarizer().fit(y)
                self.classes_ = self._binarizer.classes_
            else:
                self.classes_ = (np.asarray(partial) if partial is not None
                                 else unique_labels(y))
                if partial is not None:
                    self._partial_classes = None
                if len(self.classes_) < 2:
                    raise ValueError(f"y: expected at least 2 classes; found one class, "
                                     f"{self.classes_[0].item()!r}. A classifier needs "
                                     "examples of two or more classes.")
        if self._multilabel:
            return np.ascontiguousarray(y, dtype=np.dtype(self.dtype))
        index = np.searchsorted(self.classes_, y)
        index = np.clip(index, 0, len(self.classes_) - 1)
        if not np.array_equal(np.asarray(self.classes_)[index], y):
            unknown = [v for v in np.unique(y) if v not in set(self.classes_)]
            raise ValueError(f"y: expected labels among the classes {self.classes_.tolist()}; "
                             f"found {np.asarray(unknown[:5]).tolist()}.")
        if len(self.classes_) == 2:
            return index.astype(np.dtype(self.dtype)).reshape(-1, 1)
        return index.astype(np.int64)  # class labels: sparse categorical cross-entropy

    def _n_network_outputs(self):
        return len(self.classes_)

    def _n_outputs(self, Y):
        return Y.shape[1] if self._multilabel else 1

    def _output(self, n_out):
        if self._multilabel or len(self.classes_) == 2:
            return "sigmoid", "binary_crossentropy"
        return "softmax", "sparse_categorical_crossentropy"

    def _stratify(self, y):
        # MLP stratifies when its network has one output: two classes, not multiclass
        return not self._multilabel and len(self.classes_) == 2

    def _scales(self):
        k = float(self._network_outputs) if self._multilabel else 1.0
        return k, k

    def _score_on(self, network, X, y):
        return accuracy_score(y, self._decide(network.predict(X)))

    def _decide(self, p):
        if self._multilabel:
            return (p > 0.5).astype(int)
        if p.shape[1] == 1:
            return np.asarray(self.classes_)[(p[:, 0] > 0.5).astype(int)]
        return np.asarray(self.classes_)[np.argmax(p, axis=1)]

    def predict(self, X):
        """Class labels (a 0/1 matrix for multi-label data)."""
        return self._decide(self._outputs(X))

    def predict_proba(self, X):
        """Class probabilities, ``(n_samples, n_classes)``; columns in ``classes_`` order."""
        p = self._outputs(X).astype(np.float64)
        if not self._multilabel and p.shape[1] == 1:
            return np.hstack([1 - p, p])
        return p

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags
