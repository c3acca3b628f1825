"""The backend contract (``fastbp/_backends/_contract.py``), checked for every registered backend.

One conformance suite, parametrised over ``fastbp._backends.backend_names()``
x dtype (conftest's ``backend`` / ``compiled_backend`` fixtures: a backend
that cannot be imported here is skipped with the registry's reason; "cuda"
on the CPU simulator only with ``FASTBP_TEST_CUDA=1``).  Each backend is
driven through the contract alone -- ``predict``, ``loss_sum``,
``loss_and_gradients``, ``open_trainer`` and its trainer, with
``_contract.train_chunk`` -- and compared with the NumPy reference
(``numpy_``, itself checked against ``tests/naive.py`` in test_parity.py):

* every activation x loss, every optimizer code, batch 1 and batch > 1 with a
  short last batch, on tiny nets and on layers sized from the register tile
  the CPU really uses (``tile + 3``, ``2 * tile + 1``; conftest.tile_width);
* predict / loss / gradients over many rows (blocks and a ragged last one);
  unusual shapes (one layer, width-1 layers, padded rows);
* the trainer's semantics: the model's buffers change only on ``store``;
  ``reload`` undoes the chunks since the last store; ``train`` + ``store``
  equals ``_contract.train_chunk``; ``close`` writes nothing;
* divergence: a batch with a NaN / inf loss stops the chunk before its update;
* the one policy: wrong dtype, non-contiguous, wrong shape, read-only output
  or out-of-range ``order`` raise TypeError / ValueError / IndexError before
  anything runs -- never a conversion, never a crash -- and leave the arrays
  unchanged; read-only inputs are accepted as they are.

A new backend is tested by registering it.  The helpers (``problem``,
``run_case``, ``check_case``, the case lists) are also what the per-backend
files use for their own variants (test_cython.py: every ISA copy;
test_numba.py: which kernel each case runs).
"""

import itertools

import numpy as np
import pytest

from fastbp import _backends
from fastbp._backends import _codes as C
from fastbp._backends import _contract, numpy_
from fastbp._backends._layout import n_params

from .conftest import assert_close, tile_width

#: hyper = [learning_rate, h1, h2, epsilon] per optimizer code
HYPER = {
    C.SGD: [0.05, 0.0, 0.0, 0.0],
    C.SGD_MOMENTUM: [0.02, 0.9, 0.0, 0.0],
    C.SGD_NESTEROV: [0.02, 0.9, 0.0, 0.0],
    C.ADAM: [0.01, 0.9, 0.999, 1e-7],
    C.RMSPROP: [0.01, 0.9, 0.0, 1e-7],
    C.RMSPROP_MOMENTUM: [0.01, 0.9, 0.5, 1e-7],
}
OPT_NAMES = {code: name for name, code in C.__dict__.items()
             if name in ("SGD", "SGD_MOMENTUM", "SGD_NESTEROV", "ADAM", "RMSPROP",
                         "RMSPROP_MOMENTUM")}
ACT_NAMES = {code: name for name, code in C.ACTIVATIONS.items()}
LOSS_NAMES = {code: name for name, code in C.LOSSES.items()}

#: Widths of the tile-sized nets are resolved per dtype when a test runs.
#: "tile+3": full tiles and a ragged edge; "2tile+1": two tiles and one unit, deeper.
TILED = {"tile+3": lambda t: (6, t + 3, 5, 1), "2tile+1": lambda t: (3, 2 * t + 1, 9, 10, 2)}
ROWS = 11   # batch 3 leaves a short last batch of 2, batch 5 one of 1

# on the CUDA simulator (one Python thread per CUDA thread) wide layers and many rows
# take too long: those cases stay out of the cuda_sim CI step (conftest)
simulator_slow = pytest.mark.simulator_slow


def sizes_of(spec, dtype):
    """Layer widths for a net spec: "3-4-2", or one of TILED (sized for ``dtype``)."""
    if spec in TILED:
        return TILED[spec](tile_width(dtype))
    return tuple(int(s) for s in spec.split("-"))


def _wide(spec):
    return spec in TILED or max(sizes_of(spec, "float64")) > 8


def acts_for(sizes, hidden, loss):
    """Hidden layers ``hidden``; the head sigmoid for BCE, ``hidden`` for MSE, else linear."""
    out = C.SIGMOID if loss == C.BINARY_CROSSENTROPY else hidden if loss == C.MSE else C.LINEAR
    return np.array([hidden] * (len(sizes) - 2) + [out], dtype=np.int64)


def problem(sizes, loss, dtype, rows=ROWS, seed=0):
    """``(sizes, params, X, Y)``: uniform weights, normal inputs, targets fit for ``loss``."""
    rng = np.random.default_rng(seed)
    sizes = np.array(sizes, dtype=np.int64)
    scale = min(1.0, 3 / np.sqrt(sizes.max()))   # wide layers: smaller weights, no blow-up
    params = (rng.uniform(-0.5, 0.5, n_params(sizes)) * scale).astype(dtype)
    X = rng.normal(size=(rows, sizes[0])).astype(dtype)
    if loss == C.BINARY_CROSSENTROPY:
        Y = (rng.random((rows, sizes[-1])) > 0.5).astype(dtype)
    else:
        Y = np.tanh(rng.normal(size=(rows, sizes[-1]))).astype(dtype)
    return sizes, params, X, Y


def fresh_state(params):
    return np.zeros((C.N_STATE_SLOTS, params.size), dtype=params.dtype)


def train(module, sizes, acts, loss, params, X, Y, batch, opt, chunks=2, step=0):
    """``chunks`` chunks (each a new row order; the state and step carry over) through
    ``_contract.train_chunk``; returns the trained copies and per-chunk results."""
    params = params.copy()
    state = fresh_state(params)
    hyper = np.array(HYPER[opt])
    totals, done = [], []
    for chunk in range(chunks):
        order = np.random.default_rng(100 + chunk).permutation(len(X)).astype(np.int64)
        total, rows = _contract.train_chunk(module, params, sizes, acts, loss, X, Y, order,
                                            batch, opt, hyper, state, step)
        step += -(-rows // batch)
        totals.append(total)
        done.append(rows)
    return dict(params=params, state=state, totals=np.array(totals), done=done)


def evaluate(module, sizes, acts, loss, params, X, Y):
    """Every inference entry point once."""
    out = np.empty((len(X), int(sizes[-1])), dtype=params.dtype)
    module.predict(params, sizes, acts, X, out)
    grad = np.empty_like(params)
    grad_loss = module.loss_and_gradients(params, sizes, acts, loss, X, Y, grad)
    return dict(out=out, grad=grad,
                losses=np.array([grad_loss, module.loss_sum(params, sizes, acts, loss, X, Y)]))


def compare(got, want, dtype):
    if "done" in want:
        assert got["done"] == want["done"]
    assert got.keys() == want.keys()
    for key in want:
        if key != "done":
            assert_close(got[key], want[key], dtype)


def run_case(module, case, dtype, rows=ROWS, chunks=2, step=0):
    """Train one case (spec, activation, loss, optimizer, batch), then evaluate."""
    spec, act, loss, opt, batch = case
    sizes, params, X, Y = problem(sizes_of(spec, dtype), loss, dtype, rows=rows)
    acts = acts_for(sizes, act, loss)
    result = train(module, sizes, acts, loss, params, X, Y, batch, opt, chunks, step)
    result.update(evaluate(module, sizes, acts, loss, result["params"], X, Y))
    return result


def check_case(module, case, dtype, **kw):
    """``module`` agrees with the NumPy reference on ``case``."""
    got = run_case(module, case, dtype, **kw)
    assert got["params"].dtype == np.dtype(dtype)
    compare(got, run_case(numpy_, case, dtype, **kw), dtype)


def _case_id(case):
    spec, act, loss, opt, batch = case
    return f"{spec}-{ACT_NAMES[act]}-{LOSS_NAMES[loss]}-{OPT_NAMES[opt].lower()}-b{batch}"


def _params(cases, ids=_case_id):
    return [pytest.param(c, id=ids(c), marks=[simulator_slow] if _wide(c[0]) else [])
            for c in cases]


# ----------------------------------------------------------------------------- the cases
# Every activation meets every loss once per net; optimizers and batch sizes (1, and
# 3 / 5 with a short last batch) rotate through the pairs.
CASES = [(spec, act, loss, opt, batch)
         for spec in ("3-4-2", "tile+3", "2tile+1")
         for (act, loss), opt, batch in zip(itertools.product(range(4), range(4)),
                                            itertools.cycle(sorted(HYPER)),
                                            itertools.cycle([1, 5, 1, 3, 1]))]
# plain SGD per sample, every activation, on every net (Numba: the kernel generated for
# a tiny net, the generic per-sample one otherwise)
CASES += [(spec, act, C.MSE, C.SGD, 1) for spec in ("2-2-1", "3-4-2", "tile+3", "2tile+1")
          for act in range(4)]
# every optimizer with both batch sizes, on a net two hidden layers deep
CASES += [("2-3-3-1", C.TANH, C.MSE, opt, batch) for opt in sorted(HYPER) for batch in (1, 3)]
CASES = list(dict.fromkeys(CASES))

#: unusual shapes: (spec, activation codes); trained with SGD and Adam, batch 1, 3, 4
SHAPES = [
    ("2-2-1", [C.LINEAR, C.LINEAR]),
    ("3-4-2", [C.RELU, C.LINEAR]),
    ("4-3", [C.LINEAR]),                          # one layer
    ("1-1-1", [C.RELU, C.LINEAR]),
    ("2-3-3-1", [C.TANH, C.RELU, C.LINEAR]),
    ("3-17-9-2", [C.RELU, C.SIGMOID, C.LINEAR]),  # kernel rows padded to cache lines
    ("5-33-1", [C.TANH, C.LINEAR]),               # a one-unit head after a wide layer
    ("tile+3", [C.RELU, C.TANH, C.LINEAR]),
    ("2tile+1", [C.SIGMOID, C.RELU, C.TANH, C.LINEAR]),
]

#: (spec, optimizer, batch) of the divergence cases (Numba: each training kernel)
DIVERGENCE = [("3-4-2", C.SGD, 1), ("2-2-1", C.SGD, 2), ("3-4-2", C.ADAM, 3),
              ("tile+3", C.SGD, 1), ("tile+3", C.ADAM, 1), ("tile+3", C.SGD, 4)]


def module_of(name):
    return _backends.resolve(name)[1]


# ----------------------------------------------------------------------------- registration
def test_backend_implements_the_contract(backend):
    module = module_of(backend)
    assert _contract.missing(module) == []
    assert module.NAME == backend
    assert backend in _backends.available_backends()
    assert _backends.import_error(backend) is None


def test_missing_reports_what_a_module_lacks():
    import types

    empty = types.ModuleType("empty")
    assert _contract.missing(empty) == [*_contract.FUNCTIONS, "NAME", "RELEASES_GIL"]
    partial = types.SimpleNamespace(NAME="x", RELEASES_GIL=False,
                                    **{f: (lambda *a: None)
                                                 for f in _contract.FUNCTIONS[:-1]})
    assert _contract.missing(partial) == [_contract.FUNCTIONS[-1]]
    assert _contract.missing(numpy_) == []


def test_convenience_train_chunk_is_the_contract_helper(backend, dtype):
    """``module.train_chunk`` is ``_contract.train_chunk(module, ...)``, to the bit."""
    module = module_of(backend)
    assert callable(getattr(module, "train_chunk", None)), f"{backend}_ has no train_chunk"
    sizes, params, X, Y = problem((3, 4, 2), C.MSE, dtype)
    acts = acts_for(sizes, C.TANH, C.MSE)
    order = np.arange(ROWS, dtype=np.int64)[::-1].copy()
    results = []
    for call in (module.train_chunk, lambda *a: _contract.train_chunk(module, *a)):
        p, state = params.copy(), fresh_state(params)
        results.append((call(p, sizes, acts, C.MSE, X, Y, order, 3, C.ADAM,
                             np.array(HYPER[C.ADAM]), state, 0), p, state))
    (r0, p0, s0), (r1, p1, s1) = results
    assert r0 == r1
    np.testing.assert_array_equal(p0, p1)
    np.testing.assert_array_equal(s0, s1)


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("case", _params(CASES))
def test_matches_numpy(compiled_backend, case, dtype):
    """Two chunks of training, then predict / loss_sum / loss_and_gradients, against numpy_."""
    check_case(module_of(compiled_backend), case, dtype)


@pytest.mark.parametrize("batch", [1, 3])
def test_adam_step_counter_continues(compiled_backend, batch):
    """Adam's t = step + 1 for the first batch of a chunk."""
    check_case(module_of(compiled_backend), ("3-4-2", C.TANH, C.MSE, C.ADAM, batch),
               "float64", step=41)


@simulator_slow
@pytest.mark.parametrize("loss", range(4), ids=LOSS_NAMES.get)
@pytest.mark.parametrize("spec", ["3-4-2", "tile+3", "2tile+1"])
def test_predict_loss_gradients_over_many_rows(compiled_backend, spec, loss, dtype):
    """301 rows: the inference entry points go through rows in blocks, a ragged last one."""
    module = module_of(compiled_backend)
    sizes, params, X, Y = problem(sizes_of(spec, dtype), loss, dtype, rows=301)
    acts = acts_for(sizes, (loss + 1) % 4, loss)
    compare(evaluate(module, sizes, acts, loss, params, X, Y),
            evaluate(numpy_, sizes, acts, loss, params, X, Y), dtype)


@pytest.mark.simulator_slow(dtype="float32")
@pytest.mark.parametrize("batch", [1, 3, 4])
@pytest.mark.parametrize("spec,acts", [pytest.param(s, a, id=s, marks=[simulator_slow]
                                                    if _wide(s) else []) for s, a in SHAPES])
def test_shapes(compiled_backend, spec, acts, batch, dtype):
    """Tiny, one-layer, width-1, padded and tile-sized layouts; plain SGD and Adam."""
    module = module_of(compiled_backend)
    sizes, params, X, Y = problem(sizes_of(spec, dtype), C.MSE, dtype, rows=14,
                                  seed=len(spec) + batch)
    acts = np.array(acts, dtype=np.int64)
    for opt in (C.SGD, C.ADAM):
        results = []
        for m in (module, numpy_):
            result = train(m, sizes, acts, C.MSE, params, X, Y, batch, opt, chunks=3)
            result.update(evaluate(m, sizes, acts, C.MSE, result["params"], X, Y))
            results.append(result)
        compare(*results, dtype)


# ----------------------------------------------------------------------------- the trainer
@pytest.mark.parametrize("opt,batch", [(C.SGD, 1), (C.SGD, 3), (C.ADAM, 1), (C.ADAM, 3)])
def test_trainer_store_reload_close(backend, opt, batch, dtype):
    """The model's buffers change only on store; reload undoes the chunks since the last
    store; train + store equals ``_contract.train_chunk``; close writes nothing."""
    module = module_of(backend)
    sizes, params, X, Y = problem((3, 4, 2), C.MSE, dtype)
    acts = acts_for(sizes, C.RELU, C.MSE)
    hyper = np.array(HYPER[opt])
    order1 = np.random.default_rng(1).permutation(ROWS).astype(np.int64)
    order2 = np.random.default_rng(2).permutation(ROWS).astype(np.int64)
    model_p, model_s = params.copy(), fresh_state(params)
    ref_p, ref_s = params.copy(), fresh_state(params)

    def unchanged_since(p, s):
        np.testing.assert_array_equal(model_p, p)
        np.testing.assert_array_equal(model_s, s)

    trainer = module.open_trainer(model_p, model_s, sizes, acts, C.MSE, batch, opt, hyper)
    try:
        assert trainer.finite()
        first = trainer.train(X, Y, order1, 0)
        assert first[1] == ROWS
        unchanged_since(params, fresh_state(params))       # nothing stored yet
        trainer.store()
        assert _contract.train_chunk(module, ref_p, sizes, acts, C.MSE, X, Y, order1, batch,
                                     opt, hyper, ref_s, 0) == first
        unchanged_since(ref_p, ref_s)                      # train + store == train_chunk
        assert not np.array_equal(model_p, params)
        step = -(-first[1] // batch)
        second = trainer.train(X, Y, order2, step)
        unchanged_since(ref_p, ref_s)                      # the second chunk is not stored
        trainer.reload()                                   # ... and is undone
        assert trainer.finite()
        assert trainer.train(X, Y, order2, step) == second  # from the stored point again
        trainer.store()
        assert _contract.train_chunk(module, ref_p, sizes, acts, C.MSE, X, Y, order2, batch,
                                     opt, hyper, ref_s, step) == second
        unchanged_since(ref_p, ref_s)
        # two chunks since the last store, then reload + store: the stored point again
        trainer.train(X, Y, order1, 2 * step)
        trainer.train(X, Y, order2, 3 * step)
        trainer.reload()
        trainer.store()
        unchanged_since(ref_p, ref_s)
        trainer.train(X, Y, order1, 2 * step)
    finally:
        trainer.close()
    unchanged_since(ref_p, ref_s)                          # close wrote nothing


def test_trainer_finite_sees_the_working_copy(backend, dtype):
    module = module_of(backend)
    sizes, params, X, Y = problem((3, 4, 2), C.MSE, dtype)
    acts = acts_for(sizes, C.TANH, C.MSE)
    params[5] = np.inf
    state = fresh_state(params)
    trainer = module.open_trainer(params, state, sizes, acts, C.MSE, 1, C.SGD,
                                  np.array(HYPER[C.SGD]))
    try:
        assert not trainer.finite()
        params[5] = 0.0
        assert not trainer.finite()   # the working copy was taken at open ...
        trainer.reload()
        assert trainer.finite()       # ... and reloaded from the model's buffers
    finally:
        trainer.close()


def test_empty_chunk_and_inputs(backend, dtype):
    module = module_of(backend)
    sizes, params, X, Y = problem((3, 4, 2), C.MSE, dtype)
    acts = acts_for(sizes, C.RELU, C.MSE)
    state = fresh_state(params)
    before = params.copy()
    assert _contract.train_chunk(module, params, sizes, acts, C.MSE, X, Y,
                                 np.empty(0, np.int64), 1, C.SGD, np.array(HYPER[C.SGD]),
                                 state, 0) == (0.0, 0)
    np.testing.assert_array_equal(params, before)
    assert not state.any()
    grad = np.full_like(params, 7.0)
    assert module.loss_and_gradients(params, sizes, acts, C.MSE, X[:0], Y[:0], grad) == 0.0
    assert not grad.any()
    assert module.loss_sum(params, sizes, acts, C.MSE, X[:0], Y[:0]) == 0.0
    module.predict(params, sizes, acts, X[:0], np.empty((0, 2), dtype=dtype))


# ----------------------------------------------------------------------------- divergence
@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # overflow in the NumPy reference
@pytest.mark.parametrize("bad", ["nan", "inf", "huge"])
@pytest.mark.parametrize("spec,opt,batch", [
    pytest.param(s, o, b, id=f"{s}-{OPT_NAMES[o].lower()}-b{b}",
                 marks=[simulator_slow] if _wide(s) else []) for s, o, b in DIVERGENCE])
def test_non_finite_batch_stops_before_its_update(compiled_backend, spec, opt, batch, bad,
                                                  dtype):
    """Row 13 of 20 makes its batch's loss NaN / inf (a NaN or inf input, or a target so large
    that the loss overflows): that batch is not applied, rows_done
    counts the batches before it, and everything agrees with numpy_."""
    module = module_of(compiled_backend)
    sizes, params, X, Y = problem(sizes_of(spec, dtype), C.MSE, dtype, rows=20)
    if bad == "inf":
        X[13] = np.inf
    elif bad == "nan":
        X[13, 1] = np.nan
    else:  # finite data whose squared error overflows
        Y[13, 0] = np.finfo(dtype).max
    acts = acts_for(sizes, C.RELU, C.MSE)
    results = []
    for m in (module, numpy_):
        p, state = params.copy(), fresh_state(params)
        with np.errstate(all="ignore"):
            total, done = _contract.train_chunk(m, p, sizes, acts, C.MSE, X, Y,
                                                np.arange(20, dtype=np.int64), batch, opt,
                                                np.array(HYPER[opt]), state, 0)
        results.append(dict(params=p, state=state, totals=np.array([total]), done=[done]))
    assert results[0]["done"] == [13 // batch * batch]
    assert np.isfinite(results[0]["params"]).all() and np.isfinite(results[0]["state"]).all()
    assert np.isfinite(results[0]["totals"]).all()
    compare(*results, dtype)


# ----------------------------------------------------------------------------- the one policy
def _valid(dtype="float64"):
    sizes, params, X, Y = problem((3, 4, 2), C.MSE, dtype, rows=6)
    return dict(params=params, sizes=sizes, acts=acts_for(sizes, C.RELU, C.MSE), loss=C.MSE,
                X=X, Y=Y, order=np.arange(6, dtype=np.int64), batch_size=2, optimizer=C.SGD,
                hyper=np.array([0.1, 0, 0, 0]), state=fresh_state(params), step=0)


def _readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


TRAIN_REFUSALS = [
    (dict(order=np.array([0, 6], dtype=np.int64)), IndexError, ["order", "[0, 6)", "6"]),
    (dict(order=np.array([-1, 2], dtype=np.int64)), IndexError, ["order", "-1"]),
    (dict(order=np.array([0, 1], dtype=np.int32)), TypeError, ["order", "int64", "int32"]),
    (dict(order=np.arange(12, dtype=np.int64)[::2]), ValueError, ["order", "C-contiguous"]),
    (dict(order=np.array([0.0, 1.0])), TypeError, ["order", "int64", "float64"]),
    (dict(X=np.zeros((6, 3), dtype=np.float32)), TypeError, ["X", "float64", "float32"]),
    (dict(X=np.asfortranarray(np.ones((6, 3)))), ValueError, ["X", "C-contiguous",
                                                              "np.ascontiguousarray"]),
    (dict(X=np.ones((6, 6))[:, ::2]), ValueError, ["X", "C-contiguous"]),
    (dict(X=np.ones((6, 4))), ValueError, ["X", "(n, 3)", "(6, 4)"]),
    (dict(X=np.ones(18)), ValueError, ["X", "2-D"]),
    (dict(Y=np.ones((5, 2))), ValueError, ["Y", "(6, 2)", "(5, 2)"]),
    (dict(Y=np.ones((6, 2), dtype=np.float32)), TypeError, ["Y", "float64", "float32"]),
    (dict(X=[[0.0] * 3] * 6), TypeError, ["X", "numpy.ndarray", "list"]),
    (dict(params=np.zeros(7)), ValueError, ["params", "26", "7"]),
    (dict(params=np.zeros(26, dtype=np.int64)), TypeError, ["params", "float32 or float64"]),
    (dict(params=np.zeros(52)[::2]), ValueError, ["params", "C-contiguous"]),
    (dict(params=_readonly(np.zeros(26))), ValueError, ["params", "read-only"]),
    (dict(state=np.zeros((2, 5))), ValueError, ["state", "(2, 26)", "(2, 5)"]),
    (dict(state=np.zeros((2, 26), dtype=np.float32)), TypeError, ["state", "float64"]),
    (dict(state=_readonly(np.zeros((2, 26)))), ValueError, ["state", "read-only"]),
    (dict(hyper=np.zeros(3)), ValueError, ["hyper", "4"]),
    (dict(hyper=np.zeros(4, dtype=np.float32)), TypeError, ["hyper", "float64"]),
    (dict(sizes=np.array([3, 4, 2], dtype=np.int32)), TypeError, ["sizes", "int64"]),
    (dict(acts=np.array([1, 9], dtype=np.int64)), ValueError, ["acts", "0..4"]),
    # softmax on a hidden layer, softmax without categorical cross-entropy, and the reverse
    (dict(acts=np.array([4, 0], dtype=np.int64)), ValueError, ["acts", "output layer only"]),
    (dict(acts=np.array([1, 4], dtype=np.int64)), ValueError, ["acts, loss", "loss code 0"]),
    (dict(acts=np.array([1], dtype=np.int64)), ValueError, ["acts", "2 activation codes"]),
    (dict(sizes=np.array([3, 0, 2], dtype=np.int64)), ValueError, ["sizes", "positive"]),
    (dict(loss=7), ValueError, ["loss", "0..4"]),
    (dict(loss=4), ValueError, ["acts, loss", "loss code 4"]),
    (dict(optimizer=11), ValueError, ["optimizer", "11"]),
    (dict(batch_size=0), ValueError, ["batch_size", "positive"]),
]


def _refusal_id(refusal):
    change, error, _ = refusal
    (name, value), = change.items()
    kind = (f"{value.dtype}{list(value.shape)}{'' if value.flags.c_contiguous else '-strided'}"
            f"{'' if value.flags.writeable else '-readonly'}"
            if isinstance(value, np.ndarray) else type(value).__name__)
    return f"{name}-{kind}-{error.__name__}"


@pytest.mark.parametrize("change,error,words",
                         [pytest.param(*r, id=_refusal_id(r)) for r in TRAIN_REFUSALS])
def test_training_refuses_bad_arguments_before_any_loop(backend, change, error, words):
    """open_trainer / train assert their arguments: the error names what was expected and
    found, nothing is converted, nothing runs, the caller's arrays are unchanged."""
    kw = _valid()
    kw.update(change)
    before = {k: v.copy() for k, v in kw.items() if isinstance(v, np.ndarray)}
    with pytest.raises(error) as info:
        _contract.train_chunk(module_of(backend), **kw)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    for key, value in before.items():
        np.testing.assert_array_equal(kw[key], value)


def test_inference_refuses_bad_arguments(backend):
    """predict / loss_sum / loss_and_gradients: the same checks, and the outputs untouched."""
    module = module_of(backend)
    kw = _valid()
    p, s, a, X, Y = kw["params"], kw["sizes"], kw["acts"], kw["X"], kw["Y"]
    out = np.full((6, 2), 3.0)
    grad = np.full_like(p, 3.0)
    refusals = [
        (lambda: module.predict(p, s, a, X, np.full((5, 2), 3.0)), ValueError,
         "out.*expected shape"),
        (lambda: module.predict(p, s, a, X, np.full((6, 2), 3.0, dtype=np.float32)),
         TypeError, "out.*float64"),
        (lambda: module.predict(p, s, a, X, _readonly(out)), ValueError, "out.*read-only"),
        (lambda: module.predict(p, s, a, np.asfortranarray(X), out), ValueError,
         "X.*C-contiguous"),
        (lambda: module.predict(p, s, a, X.astype(np.float32), out), TypeError,
         "X.*float64"),
        (lambda: module.predict(p[:-1].copy(), s, a, X, out), ValueError,
         "params: expected 26 values"),
        (lambda: module.loss_sum(p, s, a, C.MSE, X, Y[:3]), ValueError, "Y.*expected shape"),
        (lambda: module.loss_sum(p[:-1].copy(), s, a, C.MSE, X, Y), ValueError,
         "params: expected 26 values"),
        (lambda: module.loss_sum(p, s, a, 9, X, Y), ValueError, "loss"),
        (lambda: module.loss_and_gradients(p, s, a, C.MSE, X, Y, np.full(5, 3.0)),
         ValueError, "grad.*expected shape"),
        (lambda: module.loss_and_gradients(p, s, a, C.MSE, X, Y, _readonly(grad)),
         ValueError, "grad.*read-only"),
        (lambda: module.loss_and_gradients(p, s, a, C.MSE, X, Y, grad.astype(np.float32)),
         TypeError, "grad.*float64"),
        (lambda: module.loss_and_gradients(p, s, a, C.MSE, X, Y[:, ::2], grad), ValueError,
         "Y"),
    ]
    for call, error, match in refusals:
        with pytest.raises(error, match=match):
            call()
    assert (out == 3.0).all() and (grad == 3.0).all()
    np.testing.assert_array_equal(p, _valid()["params"])


@pytest.mark.parametrize("spec", ["3-4-2", pytest.param("tile+3", marks=simulator_slow)])
def test_read_only_inputs_are_used_as_they_are(backend, spec, dtype, tmp_path):
    """X, Y and order memory-mapped read-only from disk give the numbers writeable ones give."""
    module = module_of(backend)
    sizes, params, X, Y = problem(sizes_of(spec, dtype), C.MSE, dtype, rows=40)
    acts = acts_for(sizes, C.TANH, C.MSE)
    order = np.random.default_rng(1).permutation(40).astype(np.int64)
    maps = {}
    for name, array in (("X", X), ("Y", Y), ("order", order)):
        path = tmp_path / f"{name}.dat"
        array.tofile(path)
        maps[name] = np.memmap(path, dtype=array.dtype, mode="r", shape=array.shape)
        assert not maps[name].flags.writeable
    for batch in (1, 5):
        results = []
        for x, y, o in ((X, Y, order), (maps["X"], maps["Y"], maps["order"])):
            p, state = params.copy(), fresh_state(params)
            results.append((_contract.train_chunk(module, p, sizes, acts, C.MSE, x, y, o, batch,
                                                  C.ADAM, np.array(HYPER[C.ADAM]), state, 0),
                            p, state))
        assert results[0][0] == results[1][0]
        np.testing.assert_array_equal(results[0][1], results[1][1])
        np.testing.assert_array_equal(results[0][2], results[1][2])
    got = evaluate(module, sizes, acts, C.MSE, params, maps["X"], maps["Y"])
    want = evaluate(module, sizes, acts, C.MSE, params, X, Y)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
