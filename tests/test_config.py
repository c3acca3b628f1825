"""Settings: one object, the order config_context > set_config > FASTBP_* variable > default."""

import os
import threading

import pytest

import fastbp
from fastbp import _config


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for var in _config._ENV.values():
        monkeypatch.delenv(var, raising=False)
    yield
    fastbp.set_config(**{name: None for name in _config._ENV})


def test_defaults():
    assert fastbp.get_config() == {"backend": "auto", "chunk_rows": 32768, "cache": True,
                                   "cache_dir": None, "cython_isa": "auto"}


def test_order_of_precedence(monkeypatch):
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", "1000")
    assert _config.chunk_rows() == 1000
    fastbp.set_config(chunk_rows=2000)
    assert _config.chunk_rows() == 2000
    with fastbp.config_context(chunk_rows=3000):
        assert _config.chunk_rows() == 3000
        with fastbp.config_context(backend="numpy"):
            assert _config.chunk_rows() == 3000 and _config.backend() == "numpy"
    assert _config.chunk_rows() == 2000
    fastbp.set_config(chunk_rows=None)
    assert _config.chunk_rows() == 1000


def test_environment_spellings(monkeypatch):
    monkeypatch.setenv("FASTBP_NO_CACHE", "1")
    monkeypatch.setenv("FASTBP_BACKEND", " NumPy ")
    monkeypatch.setenv("FASTBP_CACHE_DIR", "/tmp/somewhere")
    config = fastbp.get_config()
    assert config["cache"] is False and config["backend"] == "numpy"
    assert str(_config.cache_dir()).startswith("/tmp/somewhere")


def test_context_is_per_thread():
    seen = []
    with fastbp.config_context(chunk_rows=7):
        worker = threading.Thread(target=lambda: seen.append(_config.chunk_rows()))
        worker.start()
        worker.join()
        assert _config.chunk_rows() == 7
    assert seen == [32768]


@pytest.mark.parametrize("settings,error", [
    ({"chunk_rows": 0}, ValueError), ({"chunk_rows": "x"}, ValueError),
    ({"chunk_rows": True}, ValueError), ({"cache": "yes"}, TypeError),
    ({"cython_isa": "sse9"}, ValueError), ({"colour": "red"}, TypeError),
    ({"backend": 3}, TypeError)])
def test_bad_settings_are_refused_and_change_nothing(settings, error):
    before = fastbp.get_config()
    with pytest.raises(error, match="expected"):
        fastbp.set_config(**settings)
    with pytest.raises(error, match="expected"):
        with fastbp.config_context(**settings):
            pass
    assert fastbp.get_config() == before


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", "-3")
    with pytest.raises(ValueError, match="FASTBP_CHUNK_ROWS"):
        _config.chunk_rows()


def test_the_command_line_passes_settings_without_the_environment(tmp_path, capsys):
    from fastbp import cli

    before = dict(os.environ)
    status = cli.main(["train", "--synthetic", "300", "--hidden", "4", "--epochs", "1",
                       "--backend", "numpy", "--chunk-rows", "64", "--quiet"])
    assert status == 0
    assert dict(os.environ) == before
    assert _config.chunk_rows() == 32768
