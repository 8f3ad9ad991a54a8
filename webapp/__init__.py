"""maskwatch: real-time face-mask compliance monitor.

The web application factory arrives with the server; the inference core lives in
``webapp.vision`` and is usable on its own (CLI, evaluation, benchmarks).
"""

__version__ = "0.1.0"
