"""fastbp: train dense feed-forward networks by backpropagation, fast.

>>> import fastbp
>>> net = fastbp.Network([20, 64, 64, 1], activations="relu")      # doctest: +SKIP
>>> net.fit(X, y, epochs=10, batch_size=1, optimizer=fastbp.SGD(0.001))  # doctest: +SKIP
"""

from ._backends import available_backends
from ._config import config_context, get_config, set_config
from ._version import __version__
from .callbacks import Callback, EarlyStopping, History, ProgbarLogger
from .network import Network, TrainingDivergedError, load
from .optimizers import SGD, Adam, Optimizer, RMSprop
from ._info import show_config
from . import datasets, metrics

__all__ = [
    "Adam", "Callback", "EarlyStopping", "History", "Network", "Optimizer", "ProgbarLogger",
    "RMSprop", "SGD", "TrainingDivergedError", "__version__", "available_backends",
    "config_context", "datasets", "get_config", "load", "metrics", "set_config",
    "show_config",
]
