"""The weight initializer names a :class:`~fastbp.Network` accepts.

Shared by the network (which applies them) and the model file reader (which
checks a file's ``config`` against them), so neither imports the other.
"""

#: Kernel initializers by name; a number (a float) is accepted too.
KERNEL_INITIALIZERS = ("glorot_uniform", "he_uniform", "zeros")
#: Bias initializers by name; a number (a float) is accepted too.
BIAS_INITIALIZERS = ("zeros",)
