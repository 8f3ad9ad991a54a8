"""Settings in one place: defaults < ``MASKWATCH_*`` environment variables < explicit overrides.

Every other module asks for a :class:`Settings` instead of reading the environment itself,
so a test or a CLI flag can change any value without monkeypatching ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "MASKWATCH_"
# The allowed words of the settings that take one of a few (the CLI's choices come from here).
CHOICES: dict[str, tuple[str, ...]] = {"alerts": ("off", "visual", "sound"),
                                       "async_mode": ("threading", "eventlet", "gevent")}
# Threads of the threaded worker that WebSockets may not take: pages, API and /healthz stay open.
RESERVED_THREADS = 8
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _default_model_dir() -> Path:
    return PROJECT_ROOT / "model"


def _default_data_dir() -> Path:
    return PROJECT_ROOT / "data"


@dataclass(frozen=True)
class Settings:
    """Runtime settings. Paths are ``Path`` objects; ``None`` means "not available"."""

    # Folder holding kaggle-facemask/, maskedfacenet-maskon/, chandrikadeb7-facemask/.
    data_dir: Path = field(default_factory=_default_data_dir, metadata={"env": "MASKWATCH_DATA"})
    # Folder with Keras' ImageNet backbone files (copied into $KERAS_HOME/models for offline use).
    weights_dir: Path | None = field(default=None, metadata={"env": "MASKWATCH_WEIGHTS"})
    # Folder with mask_classifier.tflite and labels.json.
    model_dir: Path = field(default_factory=_default_model_dir, metadata={"env": "MASKWATCH_MODEL"})
    # TFLite interpreter threads for the classifier (measured in bench/classifier.py).
    classifier_threads: int = 1
    # Face detector by name (webapp/vision/detector.py DETECTORS) and its interpreter threads
    # (0 = the CPU cores shared among the pipelines that run side by side). "trained" is ours
    # (model/face_detector.tflite, see model/MODEL_CARD.md); "blazeface" the earlier ensemble.
    detector: str = "trained"
    detector_threads: int = 0
    # Largest encoded image accepted from files (maskwatch detect), in bytes.
    max_image_bytes: int = 8 * 1024 * 1024
    # Largest camera frame accepted over Socket.IO; the Socket.IO message limit is set above it,
    # so an oversized frame gets a clear ``too_large`` error instead of a dropped connection.
    max_frame_bytes: int = 2 * 1024 * 1024
    # Largest camera frame in pixels, refused from its header before decoding (a few-KB JPEG can
    # claim 4096x4096 and cost a worker most of a second); cameras send 1280x720 at most.
    max_frame_pixels: int = 1920 * 1080
    # Live video: a camera's frame gets the detector's thorough pass (trained: full resolution +
    # close-up pass; blazeface: far-face tiles) once this many seconds have passed since its last
    # one, the cheap pass otherwise (0: every frame); still images always get it. Set in time,
    # not frames: a far face should be found within a fraction of a second however fast the
    # camera sends, the tracker's gaps are in seconds too, and a dropped frame cannot skip a pass.
    thorough_every_s: float = 0.3
    # Inference worker threads, each with its own interpreters (0 = one per CPU core).
    workers: int = 0
    # Server.
    host: str = "127.0.0.1"
    port: int = 5000
    async_mode: str = "threading"
    certfile: Path | None = None
    keyfile: Path | None = None
    # Connections (threading mode): worker threads, each open WebSocket holds one and the last
    # RESERVED_THREADS are kept for pages and the API; a client must finish its request head
    # within header_timeout seconds; one address holds at most max_client_connections sockets
    # (0 = no limit: set it so behind a proxy, which connects from one address). guard_connections
    # False runs gunicorn's stock gthread worker instead (compared in bench/loadtest.py).
    threads: int = 64
    header_timeout: float = 10.0
    max_client_connections: int = 100
    guard_connections: bool = True
    # Access token for every page, API and socket; required when binding beyond loopback.
    token: str | None = None
    no_auth: bool = False
    # People counting: a track becomes a person after this many frames; ends after this gap.
    track_min_frames: int = 3
    track_max_gap_s: float = 1.0
    # Alert when a person without a (correct) mask is confirmed: off | visual | sound.
    alerts: str = "visual"
    # History database (SQLite; default: maskwatch.sqlite3 in the instance folder) and retention.
    history_path: Path | None = None
    retention_days: int = 90
    # Several servers: a SQLAlchemy URL for the history instead of the SQLite file
    # (postgresql://user@host:port/db), Redis for live counts and alerts shared among servers,
    # and this server's name on a shared dashboard (default: host name and port).
    database_url: str | None = field(default=None, metadata={"env": "MASKWATCH_DATABASE_URL"})
    redis_url: str | None = field(default=None, metadata={"env": "MASKWATCH_REDIS_URL"})
    server_name: str | None = None
    # Proxies in front of this server (nginx: 1) whose X-Forwarded-For/-Proto are trusted, so
    # login throttling sees the client's address and cookies know the page came over https.
    proxy_hops: int = 0
    # Dashboard 'counts' events at most this often (seconds).
    counts_interval: float = 0.5

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"setting {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"setting port must be 1-65535, got {self.port}")
        if self.header_timeout <= 0 or self.max_client_connections < 0 or self.threads < RESERVED_THREADS + 1:
            raise ValueError(f"settings header_timeout must be > 0, max_client_connections >= 0 and threads "
                             f"> {RESERVED_THREADS}")
        if self.thorough_every_s < 0:
            raise ValueError(f"setting thorough_every_s must be >= 0, got {self.thorough_every_s}")
        for name in ("track_min_frames", "retention_days", "max_frame_bytes", "max_image_bytes",
                     "max_frame_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"setting {name} must be at least 1, got {getattr(self, name)}")

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None,
             environ: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from defaults, then environment variables, then ``overrides``.

        Each field reads ``MASKWATCH_<FIELD>`` unless it names a shorter variable in its metadata
        (``MASKWATCH_DATA``, ``MASKWATCH_WEIGHTS``, ``MASKWATCH_MODEL``).

        ``None`` values in ``overrides`` are ignored so argparse results can be passed as-is.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(env_name(f))
            if raw not in (None, ""):
                values[f.name] = raw
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = value
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})


def env_name(f: dataclasses.Field) -> str:
    """The environment variable that sets field ``f``."""
    return f.metadata.get("env", ENV_PREFIX + f.name.upper())


def _coerce(cls: type, name: str, value: Any) -> Any:
    """``value`` (often a string from the environment) as the field's declared type.

    Booleans accept only the usual words: a typo must not silently read as ``False``.
    """
    kind = typing.get_type_hints(cls)[name]
    base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # X | None -> X
    if isinstance(value, base):
        return value
    text = str(value).strip()
    if base is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"setting {name} must be one of {', '.join(_TRUE + _FALSE)}, got {value!r}")
    if base is Path:
        return Path(text).expanduser()
    if base in (int, float):
        try:
            return base(text)
        except ValueError:
            kind_name = "an integer" if base is int else "a number"
            raise ValueError(f"setting {name} must be {kind_name}, got {value!r}") from None
    return value
