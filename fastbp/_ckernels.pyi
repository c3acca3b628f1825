"""Type stub for the compiled extension ``fastbp._ckernels`` (built from ``csrc/_ckernels.pyx``).

``fastbp._ckernels_avx2`` and ``fastbp._ckernels_avx512`` are the same module
compiled for newer instruction sets and have the same interface; only
``fastbp._backends.cython_`` imports them (dynamically, after checking the CPU).

The kernels do not check the range of ``order`` (debug builds do) or the
dtype agreement of their arguments beyond what the buffer protocol enforces:
call them through ``fastbp._backends.cython_``, which validates everything.
"""

from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt

_F = TypeVar("_F", np.float32, np.float64)

#: Instruction set this copy was compiled for: "baseline", "avx2", "avx512" or "neon".
ISA: Final[str]
#: True for a FASTBP_DEBUG_EXTENSION=1 build (bounds and row-index checks on).
DEBUG: Final[bool]
#: The integer codes compiled in (must equal fastbp._backends._codes).
CODES: Final[dict[str, object]]

def cpu_has_avx2_fma() -> bool: ...
def cpu_has_avx512() -> bool: ...
def predict(
    params: npt.NDArray[_F],
    sizes: npt.NDArray[np.int64],
    acts: npt.NDArray[np.int64],
    X: npt.NDArray[_F],
    out: npt.NDArray[_F],
) -> None: ...
def loss_sum(
    params: npt.NDArray[_F],
    sizes: npt.NDArray[np.int64],
    acts: npt.NDArray[np.int64],
    loss: int,
    X: npt.NDArray[_F],
    Y: npt.NDArray[_F],
) -> float: ...
def loss_and_gradients(
    params: npt.NDArray[_F],
    sizes: npt.NDArray[np.int64],
    acts: npt.NDArray[np.int64],
    loss: int,
    X: npt.NDArray[_F],
    Y: npt.NDArray[_F],
    grad: npt.NDArray[_F],
) -> float: ...
def shuffle_order(
    keys: npt.NDArray[np.uint32],
    n: int,
    start: int,
    out: npt.NDArray[np.int64],
) -> None: ...
def train_chunk(
    params: npt.NDArray[_F],
    sizes: npt.NDArray[np.int64],
    acts: npt.NDArray[np.int64],
    loss: int,
    X: npt.NDArray[_F],
    Y: npt.NDArray[_F],
    order: npt.NDArray[np.int64],
    batch_size: int,
    optimizer: int,
    hyper: npt.NDArray[np.float64],
    state: npt.NDArray[_F],
    step: int,
) -> tuple[float, int]: ...

class Trainer:
    """One network's line-aligned working copy for one fit (see ``_contract.Trainer``)."""

    def __init__(
        self,
        params: npt.NDArray[_F],
        state: npt.NDArray[_F],
        sizes: npt.NDArray[np.int64],
        acts: npt.NDArray[np.int64],
        loss: int,
        batch_size: int,
        optimizer: int,
        hyper: npt.NDArray[np.float64],
    ) -> None: ...
    def train(
        self,
        X: npt.NDArray[_F],
        Y: npt.NDArray[_F],
        order: npt.NDArray[np.int64],
        step: int,
    ) -> tuple[float, int]: ...
    def split_reserve(self, parts: int, part_rows: int) -> None: ...
    def train_split(
        self,
        X: npt.NDArray[_F],
        Y: npt.NDArray[_F],
        order: npt.NDArray[np.int64],
        step: int,
        part: int,
        parts: int,
        sync: npt.NDArray[np.int64],
        losses: npt.NDArray[np.float64],
    ) -> tuple[float, int]: ...
    def finite(self) -> bool: ...
    def store(self, params: npt.NDArray[_F], state: npt.NDArray[_F]) -> None: ...
    def reload(self, params: npt.NDArray[_F], state: npt.NDArray[_F]) -> None: ...
    def close(self) -> None: ...
