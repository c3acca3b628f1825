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
from ._many import ManyDivergedError, fit_many, predict_many
from . import datasets, metrics

__all__ = [
    "Adam", "Callback", "EarlyStopping", "History", "ManyDivergedError", "Network", "Optimizer",
    "ProgbarLogger", "RMSprop", "SGD", "TrainingDivergedError", "__version__",
    "available_backends", "config_context", "datasets", "fit_many", "get_config", "load",
    "metrics", "predict_many", "set_config", "show_config",
]
