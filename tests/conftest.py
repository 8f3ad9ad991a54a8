"""Shared fixtures: where the real datasets and the shipped model are, and synthetic data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import CHROMIUM, ROOT, LiveServer
from webapp.config import Settings

# Set before any test module imports TensorFlow (collection imports training.train): the
# detector's training step crashes in TensorFlow's oneDNN kernels (see training/train_detector.py).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Plain `pytest` from the repository root finds the shared datasets and weights next to the
# checkout (where CI and the developer machines keep them) unless the variables say otherwise.
for _variable, _folder in (("MASKWATCH_DATA", "datasets"), ("MASKWATCH_WEIGHTS", "weights/keras")):
    if _variable not in os.environ and (ROOT.parent / "shared" / _folder).is_dir():
        os.environ[_variable] = str(ROOT.parent / "shared" / _folder)
os.environ.setdefault("KERAS_HOME", str(ROOT / ".keras_home"))


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.load()


@pytest.fixture(scope="session")
def data_dir(settings: Settings) -> Path:
    """The real datasets (MASKWATCH_DATA); tests needing them skip where they are absent."""
    needed = ("kaggle-facemask", "maskedfacenet-maskon", "chandrikadeb7-facemask")
    missing = [n for n in needed if not (settings.data_dir / n).is_dir()]
    if missing:
        pytest.skip(f"datasets not found under {settings.data_dir} ({', '.join(missing)}); "
                    "set MASKWATCH_DATA to the folder holding them (CI uses ../shared/datasets)")
    return settings.data_dir


@pytest.fixture(scope="session")
def weights_dir(settings: Settings) -> Path:
    """Keras' ImageNet backbone files (MASKWATCH_WEIGHTS), installed into $KERAS_HOME/models."""
    if settings.weights_dir is None or not Path(settings.weights_dir).is_dir():
        pytest.skip("MobileNetV2 ImageNet weights not found; set MASKWATCH_WEIGHTS "
                    "(CI uses ../shared/weights/keras)")
    from training.fit import install_offline_weights
    install_offline_weights(settings.weights_dir)
    return settings.weights_dir


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The shipped model in the repository."""
    return ROOT / "model"


@pytest.fixture(autouse=True, scope="session")
def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module")
def browser():
    """Playwright, for Debian's headless Chromium (tests/test_browser.py has the flags)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    history = tmp_path_factory.mktemp("history") / "maskwatch.sqlite3"
    server = LiveServer(env={"MASKWATCH_WORKERS": "2", "MASKWATCH_HISTORY_PATH": str(history)}).wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def unsure_model(model_dir, tmp_path_factory):
    """A copy of the shipped model that calls every face unsure."""
    folder = tmp_path_factory.mktemp("unsure-model")
    for f in model_dir.iterdir():
        if f.is_file():
            shutil.copy(f, folder / f.name)
    contract = json.loads((folder / "labels.json").read_text())
    contract["unsure_below"] = 1.01  # above every probability: every face is unsure
    (folder / "labels.json").write_text(json.dumps(contract))
    return folder
