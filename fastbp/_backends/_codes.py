"""Integer codes shared by every backend.

The compiled kernels take small integers instead of strings so that one
compiled function serves every activation, loss and optimizer.  This module is
the single place that maps the public names onto those integers; it imports
nothing, so kernels may import it freely.
"""

# Activations (one code per layer).  SOFTMAX is an output activation only, and the
# kernels store its *log*-softmax, z - max(z) - log(sum(exp(z - max(z)))), as the layer's
# activations: categorical cross-entropy is then formed from the logits without a log of
# an underflowed probability, and predict returns exp() of it, the softmax.
LINEAR, RELU, SIGMOID, TANH, SOFTMAX = 0, 1, 2, 3, 4
ACTIVATIONS = {"linear": LINEAR, "relu": RELU, "sigmoid": SIGMOID, "tanh": TANH,
               "softmax": SOFTMAX}

# Losses the kernels implement.  CATEGORICAL_CROSSENTROPY pairs with a SOFTMAX output
# (and only with it): its per-row loss is a SUM over the outputs, -sum_j y_j log p_j,
# where every other loss takes the mean over outputs.
MSE, MAE, HUBER, BINARY_CROSSENTROPY, CATEGORICAL_CROSSENTROPY = 0, 1, 2, 3, 4
LOSSES = {"mse": MSE, "mae": MAE, "huber": HUBER, "binary_crossentropy": BINARY_CROSSENTROPY,
          "categorical_crossentropy": CATEGORICAL_CROSSENTROPY}
# Losses the API offers on top: integer class labels that the data layer turns into
# one-hot rows (fastbp._data), so the kernels see categorical cross-entropy.
SPARSE_LOSSES = {"sparse_categorical_crossentropy": CATEGORICAL_CROSSENTROPY}
#: Every loss name a Network takes, and its kernel code.
LOSS_NAMES = {**LOSSES, **SPARSE_LOSSES}

# Keras's backend.epsilon(): binary cross-entropy clips predictions to [EPS, 1 - EPS].
BCE_EPSILON = 1e-7
# Keras's Huber default.
HUBER_DELTA = 1.0

# Optimizer update rules.  ``hyper`` is a float64 array of length N_HYPER:
#   [learning_rate, h1, h2, epsilon]
#   SGD*:              h1 = momentum
#   ADAM:              h1 = beta_1, h2 = beta_2
#   RMSPROP*:          h1 = rho,    h2 = momentum
# ``state`` is an array of shape (N_STATE_SLOTS, n_params) in the network dtype:
#   SGD_MOMENTUM / SGD_NESTEROV: state[0] = velocity
#   ADAM:                        state[0] = m, state[1] = v
#   RMSPROP:                     state[0] = v
#   RMSPROP_MOMENTUM:            state[0] = v, state[1] = momentum buffer
SGD, SGD_MOMENTUM, SGD_NESTEROV, ADAM, RMSPROP, RMSPROP_MOMENTUM = 0, 1, 2, 3, 4, 5
N_HYPER = 4
N_STATE_SLOTS = 2
