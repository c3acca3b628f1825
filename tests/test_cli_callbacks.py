"""Fit features the command line builds on: validation_split, EarlyStopping, the progress bar."""

import io

import numpy as np
import pytest

import fastbp
from fastbp.datasets import make_regression


class WeightsPerEpoch(fastbp.Callback):
    def on_train_begin(self, logs=None):
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.network.get_weights())


def _net():
    return fastbp.Network([3, 6, 1], activations="tanh", backend="numpy", seed=0)


def _setup():
    X, y = make_regression(80, 3, seed=1)
    # validation targets that training moves away from: val_loss first falls, then rises
    X_val, y_val = X[:20], -y[:20] + 0.5
    return X, y, X_val, y_val


def test_early_stopping_restores_the_best_weights_and_stops_after_patience():
    X, y, X_val, y_val = _setup()
    spy = WeightsPerEpoch()
    stopper = fastbp.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    net = _net()
    hist = net.fit(X, y, epochs=50, batch_size=4, optimizer=fastbp.SGD(0.05),
                   validation_data=(X_val, y_val), callbacks=[spy, stopper], verbose=0)
    val = hist.history["val_loss"]
    best = int(np.argmin(val))
    assert len(val) == best + 3 < 50                    # stopped `patience` epochs after the best
    assert stopper.best_epoch == best and stopper.stopped_epoch == best + 2
    assert stopper.best == val[best]
    for restored, kept in zip(net.get_weights(), spy.weights[best]):
        assert restored.tobytes() == kept.tobytes()
    assert net.evaluate(X_val, y_val) == pytest.approx(val[best], rel=1e-12)


def test_early_stopping_without_restore_keeps_the_last_weights():
    X, y, X_val, y_val = _setup()
    spy = WeightsPerEpoch()
    net = _net()
    net.fit(X, y, epochs=50, batch_size=4, optimizer=fastbp.SGD(0.05),
            validation_data=(X_val, y_val),
            callbacks=[spy, fastbp.EarlyStopping(patience=2)], verbose=0)
    for now, last in zip(net.get_weights(), spy.weights[-1]):
        assert now.tobytes() == last.tobytes()


def test_early_stopping_min_delta_and_monitor_loss():
    X, y, _, _ = _setup()
    stopper = fastbp.EarlyStopping(monitor="loss", min_delta=10.0, patience=1)
    hist = _net().fit(X, y, epochs=10, batch_size=4, callbacks=[stopper], verbose=0)
    assert len(hist.history["loss"]) == 2      # nothing improves by 10: stop at the first chance


def test_early_stopping_needs_what_it_monitors():
    X, y, _, _ = _setup()
    with pytest.raises(ValueError, match="validation_split"):
        _net().fit(X, y, epochs=2, callbacks=[fastbp.EarlyStopping()], verbose=0)


def test_validation_split_holds_out_the_last_rows_before_shuffling():
    X, y = make_regression(100, 3, seed=2)
    a, b = _net(), _net()
    ha = a.fit(X, y, epochs=2, batch_size=5, validation_split=0.3, verbose=0)
    hb = b.fit(X[:70], y[:70], epochs=2, batch_size=5, validation_data=(X[70:], y[70:]),
               verbose=0)
    assert ha.history == hb.history
    with pytest.raises(ValueError, match="validation_split"):
        _net().fit(X[:2], y[:2], validation_split=0.4, verbose=0)


def test_progress_bar_shows_rows_per_second_and_loss():
    X, y = make_regression(300, 3, seed=0)
    out = io.StringIO()
    hist = _net().fit(X, y, epochs=2, batch_size=2, validation_split=0.1,
                      callbacks=[fastbp.ProgbarLogger(file=out)], verbose=0)
    text = out.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text and "rows/s" in text
    assert f"loss={hist.history['loss'][-1]:.4g}" in text and "val_loss=" in text


def test_verbose_1_draws_the_bar_on_stderr(capsys):
    X, y = make_regression(50, 3, seed=0)
    _net().fit(X, y, epochs=1, verbose=1)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "50" in err
