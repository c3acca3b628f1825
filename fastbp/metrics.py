"""Scores of a regression fit, and the linear least-squares baseline to compare a network with.

``fastbp train`` reports both for the held-out rows: R² and RMSE of the
network next to those of :func:`linear_baseline`.  The scores are computed
block by block (:class:`RegressionScores`), so they work on memory-mapped
data of any size.
"""

import numpy as np

from ._data import row_blocks

#: Rows per block when :func:`linear_baseline` reads the data.
BLOCK_ROWS = 1 << 16
#: :func:`linear_baseline` fits on at most this many rows (evenly spread blocks).
BASELINE_ROWS = 2_000_000

__all__ = ["BASELINE_ROWS", "BLOCK_ROWS", "RegressionScores", "linear_baseline", "r2_score",
           "rmse"]


def _as_2d(values, name):
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 1-D or 2-D array (rows, outputs); found shape "
                         f"{array.shape}.")
    return array


class RegressionScores:
    """R² and RMSE accumulated over blocks of rows, combined exactly.

    Add ``(y_true, y_pred)`` blocks with :meth:`add`; :meth:`r2` and
    :meth:`rmse` give the scores of all rows added so far, equal (up to
    rounding) to computing them on all rows at once.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbp.metrics import RegressionScores
    >>> scores = RegressionScores()
    >>> scores.add([1.0, 2.0], [1.0, 2.5]).add([3.0, 4.0], [3.0, 3.5]).n_rows
    4
    >>> round(scores.r2(), 6), round(scores.rmse(), 6)
    (0.9, 0.353553)
    """

    def __init__(self):
        self.n_rows = 0
        self._mean = self._m2 = self._sse = 0.0

    def add(self, y_true, y_pred):
        """Add a block of targets and predictions.

        Parameters
        ----------
        y_true, y_pred : array_like, shape (n_rows,) or (n_rows, n_outputs)
            Of the same shape; a 1-D array is one output.

        Returns
        -------
        RegressionScores
            ``self``, so that calls chain.
        """
        y = _as_2d(y_true, "y_true")
        p = _as_2d(y_pred, "y_pred")
        if y.shape != p.shape:
            raise ValueError(f"y_pred: expected the shape of y_true {y.shape}; found {p.shape}.")
        if self.n_rows and np.shape(self._sse) != (y.shape[1],):
            raise ValueError(f"y_true: expected {np.size(self._sse)} output(s), as the rows "
                             f"added before; found {y.shape[1]}.")
        n_b = len(y)
        if n_b == 0:
            return self
        # block mean and sum of squared deviations, merged with the running ones (Chan et al.)
        mean_b = y.mean(axis=0)
        m2_b = ((y - mean_b) ** 2).sum(axis=0)
        delta = mean_b - self._mean
        total = self.n_rows + n_b
        self._m2 = self._m2 + m2_b + delta ** 2 * self.n_rows * n_b / total
        self._mean = self._mean + delta * n_b / total
        self.n_rows = total
        self._sse = self._sse + ((y - p) ** 2).sum(axis=0)
        return self

    def r2(self):
        """The coefficient of determination, per output, then averaged over the outputs.

        Returns
        -------
        float
            ``1 - SSE / SST`` (SST about each output's mean); NaN for an output
            whose targets are all equal (and so for no rows at all).
        """
        if not self.n_rows:
            return float("nan")
        with np.errstate(divide="ignore", invalid="ignore"):
            per_output = np.where(self._m2 > 0, 1 - self._sse / self._m2, np.nan)
        return float(np.mean(per_output))

    def rmse(self):
        """The root mean squared error over all rows and outputs (NaN for no rows).

        Returns
        -------
        float
        """
        if not self.n_rows:
            return float("nan")
        return float(np.sqrt(np.sum(self._sse) / (self.n_rows * np.size(self._sse))))


def r2_score(y_true, y_pred):
    """The coefficient of determination R² of predictions ``y_pred`` of ``y_true``.

    Parameters
    ----------
    y_true, y_pred : array_like, shape (n_rows,) or (n_rows, n_outputs)

    Returns
    -------
    float
        ``1 - sum((y_true - y_pred)²) / sum((y_true - mean(y_true))²)``, per
        output, then averaged over the outputs (scikit-learn's
        ``multioutput="uniform_average"``); NaN for an output whose targets
        are all equal.

    Examples
    --------
    >>> from fastbp.metrics import r2_score
    >>> r2_score([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    0.5
    """
    return RegressionScores().add(y_true, y_pred).r2()


def rmse(y_true, y_pred):
    """The root mean squared error of predictions ``y_pred`` of ``y_true``.

    Parameters
    ----------
    y_true, y_pred : array_like, shape (n_rows,) or (n_rows, n_outputs)

    Returns
    -------
    float
        ``sqrt(mean((y_true - y_pred)²))`` over all rows and outputs.

    Examples
    --------
    >>> from fastbp.metrics import rmse
    >>> rmse([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 6.0])
    1.0
    """
    return RegressionScores().add(y_true, y_pred).rmse()


def linear_baseline(X, y, n_rows=None, max_rows=BASELINE_ROWS):
    """Least-squares fit of ``[X, 1] @ W ≈ y`` on the first ``n_rows`` rows; returns ``W``.

    The rows are reduced block by block to the R factor of a QR decomposition
    of ``[X, 1, y]`` (numerically as good as factoring the whole matrix, in
    the memory of one block), then ``numpy.linalg.lstsq`` solves the small
    triangular system.  Above ``max_rows`` rows, evenly spread blocks
    totalling about ``max_rows`` rows are used: a linear model with
    ``n_features + 1`` coefficients is settled long before that.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_features)
        A ``np.memmap`` is read block by block.
    y : array_like, shape (n_samples,) or (n_samples, n_outputs)
    n_rows : int, optional
        Fit on rows ``0:n_rows`` (e.g. the training rows before a validation
        split); all rows by default.
    max_rows : int, default BASELINE_ROWS

    Returns
    -------
    ndarray, shape (n_features + 1, n_outputs)
        The coefficients, the intercept in the last row: predictions are
        ``X @ W[:-1] + W[-1]``.

    Raises
    ------
    ValueError
        Shapes that do not fit together, or a NaN or infinity in the rows read.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbp.metrics import linear_baseline
    >>> X = np.array([[0.0], [1.0], [2.0], [3.0]])
    >>> linear_baseline(X, 2 * X[:, 0] + 1).round(6).tolist()
    [[2.0], [1.0]]
    """
    if not isinstance(X, np.ndarray):
        X = np.asarray(X, dtype=np.float64)
    if not isinstance(y, np.ndarray):
        y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X: expected a 2-D array (rows, features); found shape {X.shape}.")
    if y.ndim not in (1, 2) or len(y) != len(X):
        raise ValueError(f"y: expected shape ({len(X)},) or ({len(X)}, k) to match the rows of "
                         f"X; found shape {y.shape}.")
    stop = len(X) if n_rows is None else n_rows
    if isinstance(stop, bool) or not isinstance(stop, (int, np.integer)) \
            or not 1 <= stop <= len(X):
        raise ValueError(f"n_rows: expected an integer in [1, {len(X)}] (rows of X); found "
                         f"{n_rows!r}.")
    if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 1:
        raise ValueError(f"max_rows: expected an integer >= 1; found {max_rows!r}.")
    block = BLOCK_ROWS
    starts = list(range(0, stop, block))
    wanted = -(-max_rows // block)
    if len(starts) > wanted:
        starts = [starts[i] for i in np.unique(np.linspace(0, len(starts) - 1, wanted)
                                                .round().astype(int))]
    R = None
    for lo in starts:
        (xb, yb), = row_blocks(X, y, lo, min(lo + block, stop), block)
        A = np.hstack([xb, np.ones((len(xb), 1)), yb])
        R = np.linalg.qr(A if R is None else np.vstack([R, A]), mode="r")
    p = X.shape[1] + 1
    return np.linalg.lstsq(R[:p, :p], R[:p, p:], rcond=None)[0]
