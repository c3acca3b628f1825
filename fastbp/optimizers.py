"""Optimizers: hyper-parameters with Keras's names and defaults.

An optimizer object is configuration only.  Its state (velocities, moments,
the step count) lives with the :class:`~fastbp.Network` it trains, so a
second ``fit`` continues where the first stopped.  The update formulas are
Keras 3's and are implemented by every backend; ``fastbp/_backends/_codes.py``
describes the layout of ``hyper`` and ``state``.
"""

from dataclasses import asdict, dataclass, fields

import numpy as np

from ._backends import _codes as C
from ._validation import check_bool, check_fraction, check_positive_float, show


class Optimizer:
    """Base class; use :class:`SGD`, :class:`Adam` or :class:`RMSprop`."""

    def _code(self):
        raise NotImplementedError

    def _hyperparameters(self):
        raise NotImplementedError

    def _pack(self):
        """``(code, hyper)``: the integer rule and its float64 hyper-parameters."""
        hyper = np.zeros(C.N_HYPER, dtype=np.float64)
        values = self._hyperparameters()
        hyper[:len(values)] = values
        return self._code(), hyper

    def _check_dtype(self, dtype, what="optimizer"):
        """Raise ValueError if a nonzero hyper-parameter is 0 or inf in ``dtype``.

        The kernels compute in the network's dtype: an ``epsilon=1e-50`` is 0
        in float32, and a zero gradient then divides 0 by 0.
        """
        dtype = np.dtype(dtype)
        info = np.finfo(dtype)
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not value:
                continue
            with np.errstate(over="ignore", under="ignore"):
                cast = dtype.type(value)
            if cast == 0 or not np.isfinite(cast):
                raise ValueError(
                    f"{what}: expected hyper-parameters that {dtype.name} (the network's dtype) "
                    f"can hold; found {type(self).__name__}({name}={value!r}), which is "
                    f"{'0' if cast == 0 else 'inf'} in {dtype.name}. Pass {name} between "
                    f"{info.tiny:.3g} and {info.max:.3g} (or 0 where 0 is allowed).")

    def get_config(self):
        """Hyper-parameters as a dict, with the class name under ``"name"``."""
        return {"name": type(self).__name__, **asdict(self)}

    @staticmethod
    def from_config(config):
        """Rebuild an optimizer from :meth:`get_config`'s dict."""
        if not isinstance(config, dict):
            raise TypeError(f"optimizer config: expected a dict as get_config() returns; found "
                            f"{type(config).__name__}. Pass e.g. fastbp.Adam().get_config().")
        config_keys = set(config)
        config = dict(config)
        name = config.pop("name", None)
        classes = {cls.__name__: cls for cls in (SGD, Adam, RMSprop)}
        if not isinstance(name, str) or name not in classes:
            hint = ""
            if isinstance(name, str) and name.lower() in {n.lower() for n in classes}:
                hint = " (the name is case-sensitive)"
            found = "no 'name' key" if "name" not in config_keys else f"name {show(name)}"
            raise ValueError(f"unknown optimizer: expected a 'name' of {sorted(classes)}; "
                             f"found {found}{hint}. Pass the dict that get_config() returns, "
                             f"e.g. fastbp.Adam().get_config() = {Adam().get_config()}.")
        known = [field.name for field in fields(classes[name])]
        unknown = sorted(str(key) for key in config if key not in known)
        if unknown:
            raise ValueError(f"{name} config: expected only the keys {known}; found "
                             f"{show(unknown)}. Pass the dict that get_config() returns.")
        return classes[name](**config)


@dataclass(frozen=True)
class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    ``m <- momentum * m - learning_rate * g``, then ``w <- w + m`` (or, with
    Nesterov, ``w <- w + momentum * m - learning_rate * g``); with
    ``momentum=0`` simply ``w <- w - learning_rate * g``.

    Parameters
    ----------
    learning_rate : float, default 0.01
    momentum : float in [0, 1), default 0.0
    nesterov : bool, default False
    """

    learning_rate: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self):
        object.__setattr__(self, "learning_rate",
                           check_positive_float(self.learning_rate, "learning_rate"))
        object.__setattr__(self, "momentum", check_fraction(self.momentum, "momentum"))
        object.__setattr__(self, "nesterov", check_bool(self.nesterov, "nesterov"))

    def _code(self):
        if self.nesterov:
            return C.SGD_NESTEROV
        return C.SGD_MOMENTUM if self.momentum > 0 else C.SGD

    def _hyperparameters(self):
        return (self.learning_rate, self.momentum)


@dataclass(frozen=True)
class Adam(Optimizer):
    """Adam, as Keras 3 computes it.

    With ``t`` the 1-based step: ``alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)``,
    ``m += (g - m)(1 - beta_1)``, ``v += (g**2 - v)(1 - beta_2)``,
    ``w -= alpha * m / (sqrt(v) + epsilon)`` -- epsilon is added to the root
    of the uncorrected ``v`` (not PyTorch's form).

    Parameters
    ----------
    learning_rate : float, default 0.001
    beta_1 : float in (0, 1), default 0.9
    beta_2 : float in (0, 1), default 0.999
    epsilon : float > 0, default 1e-7
    """

    learning_rate: float = 0.001
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7

    def __post_init__(self):
        object.__setattr__(self, "learning_rate",
                           check_positive_float(self.learning_rate, "learning_rate"))
        object.__setattr__(self, "beta_1", check_fraction(self.beta_1, "beta_1", low_open=True))
        object.__setattr__(self, "beta_2", check_fraction(self.beta_2, "beta_2", low_open=True))
        object.__setattr__(self, "epsilon", check_positive_float(self.epsilon, "epsilon"))

    def _code(self):
        return C.ADAM

    def _hyperparameters(self):
        return (self.learning_rate, self.beta_1, self.beta_2, self.epsilon)


@dataclass(frozen=True)
class RMSprop(Optimizer):
    """RMSprop, as Keras 3 computes it (epsilon inside the square root).

    ``v <- rho v + (1 - rho) g**2``; ``inc = lr * g / sqrt(v + epsilon)``;
    ``w <- w - inc``, or with momentum ``b <- momentum * b + inc; w <- w - b``.

    Parameters
    ----------
    learning_rate : float, default 0.001
    rho : float in (0, 1), default 0.9
    momentum : float in [0, 1), default 0.0
    epsilon : float > 0, default 1e-7
    """

    learning_rate: float = 0.001
    rho: float = 0.9
    momentum: float = 0.0
    epsilon: float = 1e-7

    def __post_init__(self):
        object.__setattr__(self, "learning_rate",
                           check_positive_float(self.learning_rate, "learning_rate"))
        object.__setattr__(self, "rho", check_fraction(self.rho, "rho", low_open=True))
        object.__setattr__(self, "momentum", check_fraction(self.momentum, "momentum"))
        object.__setattr__(self, "epsilon", check_positive_float(self.epsilon, "epsilon"))

    def _code(self):
        return C.RMSPROP_MOMENTUM if self.momentum > 0 else C.RMSPROP

    def _hyperparameters(self):
        return (self.learning_rate, self.rho, self.momentum, self.epsilon)
