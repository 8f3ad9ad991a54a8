"""The one place a TFLite interpreter is made: LiteRT, or TensorFlow's only where LiteRT is missing."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class InterpreterUnavailable(RuntimeError):
    """Neither ai-edge-litert nor TensorFlow is installed."""


def _interpreter_class() -> type:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # platforms without a LiteRT wheel
        try:
            import tensorflow as tf
        except ImportError:
            raise InterpreterUnavailable("neither ai-edge-litert nor tensorflow is installed; "
                                         "run: pip install ai-edge-litert") from None
        log.warning("ai-edge-litert unavailable; using TensorFlow's TFLite interpreter")
        return tf.lite.Interpreter
    return Interpreter


def load_interpreter(path: Path, threads: int = 1):
    """An allocated interpreter for the .tflite file at ``path``; ``ValueError`` if it is not one."""
    interpreter = _interpreter_class()(model_path=str(path), num_threads=max(1, threads))
    interpreter.allocate_tensors()
    return interpreter
