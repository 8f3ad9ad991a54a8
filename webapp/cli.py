"""The ``maskwatch`` command: ``serve`` the web app, ``detect`` faces in image files, ``gen-cert``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from webapp.config import CHOICES, Settings
from webapp.vision.detector import DETECTORS
from webapp.vision.pipeline import FILE_FORMATS, FrameError, FrameResult, build_pipeline, decode_image, sniff_format

log = logging.getLogger("maskwatch")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
# BGR colours for annotated copies; the web pages use the same hues.
COLOURS = {"with_mask": (80, 175, 76), "mask_incorrect": (0, 165, 255), "without_mask": (60, 60, 230)}
UNSURE_COLOUR = (158, 158, 158)
SHORT_NAMES = {"with_mask": "mask", "mask_incorrect": "incorrect", "without_mask": "no mask"}  # as on the page


def expand_inputs(paths: Sequence[str]) -> Iterator[str]:
    """Files as given; a folder becomes its image files (by suffix or content), sorted."""
    for given in paths:
        p = Path(given)
        if p.is_dir():
            for child in sorted(p.iterdir()):
                if child.is_file() and (child.suffix.lower() in IMAGE_SUFFIXES or _looks_like_image(child)):
                    yield str(Path(given) / child.name)
        else:
            yield given


def _looks_like_image(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return sniff_format(f.read(16)) is not None
    except OSError:
        return False


def label_placement(box: Sequence[float], text_size: tuple[int, int], image_size: tuple[int, int]
                    ) -> tuple[int, int]:
    """Bottom-left corner of a label of ``text_size`` (w, h) for ``box``: above the box if there
    is room, else below it, and shifted so it stays inside an image of ``image_size`` (w, h)."""
    (tw, th), (iw, ih) = text_size, image_size
    x0, y0, _, y1 = (int(round(v)) for v in box)
    y = y0 - 3 if y0 - th - 3 >= 0 else min(int(round(y1)) + th + 3, ih - 1)
    return max(0, min(x0, iw - tw - 2)), max(th, y)


def annotate(image_rgb: np.ndarray, result: FrameResult) -> np.ndarray:
    """BGR copy with each face's box in its class colour (grey when unsure) and a short label
    sized to the picture, kept inside it."""
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    h, w = out.shape[:2]
    thickness = max(1, round(max(h, w) / 500))
    scale = float(np.clip(max(h, w) / 1600, 0.35, 1.2))
    for face in result.faces:
        colour = UNSURE_COLOUR if face.unsure else COLOURS.get(face.label, (255, 255, 255))
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thickness)
        text = "unsure" if face.unsure else f"{SHORT_NAMES.get(face.label, face.label)} {face.score:.0%}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        tx, ty = label_placement(face.box, (tw, th + base), (w, h))
        cv2.rectangle(out, (tx, ty - th - base), (tx + tw + 2, ty), colour, -1)
        cv2.putText(out, text, (tx + 1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _out_path(out_dir: Path, given: str, used: set[Path]) -> Path:
    src = Path(given)
    suffix = src.suffix.lower() if src.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"} else ".png"
    candidate = out_dir / (src.stem + suffix)
    n = 1
    while candidate in used:
        candidate = out_dir / f"{src.stem}-{n}{suffix}"
        n += 1
    used.add(candidate)
    return candidate


def cmd_detect(args: argparse.Namespace, settings: Settings) -> int:
    pipeline = build_pipeline(settings)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    used: set[Path] = set()
    for given in expand_inputs(args.images):
        try:
            t0 = time.perf_counter()
            image = decode_image(Path(given).read_bytes(), settings.max_image_bytes, formats=FILE_FORMATS)
            result = pipeline.process_image(image, t0=t0)
        except (OSError, FrameError) as exc:
            failed += 1
            message = exc.message if isinstance(exc, FrameError) else (exc.strerror or str(exc))
            if args.json:
                print(json.dumps({"image": given, "error": message}), flush=True)
            else:
                print(f"{given}: error: {message}", flush=True)
            continue
        written = None
        if args.out:
            written = _out_path(args.out, given, used)
            cv2.imwrite(str(written), annotate(image, result))
        if args.json:
            print(json.dumps({"image": given, **result.to_dict()}), flush=True)
        else:
            print(f"{given}: {len(result.faces)} face(s), {result.width}x{result.height}, "
                  f"{result.ms['total']:.1f} ms" + (f" -> {written}" if written else ""), flush=True)
            for f in result.faces:
                box = ", ".join(f"{v:.0f}" for v in f.box)
                print(f"  {f.label:15s} {f.score:.2f}{' unsure' if f.unsure else ''}  [{box}]", flush=True)
    if args.out:
        # On stderr with --json, so stdout stays pure JSON Lines.
        print(f"annotated copies written to {args.out.resolve()}/ ({len(used)} image(s))",
              file=sys.stderr if args.json else sys.stdout, flush=True)
    return 1 if failed else 0


def lan_addresses() -> list[str]:
    """IPv4 addresses other machines on the LAN can reach this one at."""
    import socket

    found: set[str] = set()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing interface
            found.add(s.getsockname()[0])
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.add(info[4][0])
    except OSError:
        pass
    return sorted(a for a in found if not a.startswith("127."))


def server_urls(settings: Settings) -> list[str]:
    scheme = "https" if settings.certfile else "http"
    hosts = ["localhost"] if settings.host in ("127.0.0.1", "localhost", "::1") else \
        (["localhost"] + lan_addresses() if settings.host in ("0.0.0.0", "::") else [settings.host])
    return [f"{scheme}://{h}:{settings.port}/" for h in hosts]


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from webapp.server import run_server

    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.token and not settings.no_auth:
        raise ValueError(f"binding to {settings.host} lets anyone on the network in: give an access token "
                         "(--token T or MASKWATCH_TOKEN), or --no-auth to run open on purpose")
    if bool(settings.certfile) != bool(settings.keyfile):
        raise ValueError("--certfile and --keyfile go together")
    for f in filter(None, (settings.certfile, settings.keyfile)):
        if not Path(f).is_file():
            raise ValueError(f"file not found: {f}")
    check_several_servers(settings)
    return run_server(settings, server_urls(settings))


def check_several_servers(settings: Settings) -> None:
    """Refuse a malformed --redis/--database URL, or one whose client library is missing, in
    one line before the server starts (a server that is down is fine: it is retried)."""
    import importlib.util
    if settings.redis_url:
        if not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"--redis takes a URL such as redis://localhost:6379/0, got {settings.redis_url!r}")
        if importlib.util.find_spec("redis") is None:
            raise ValueError("--redis needs the Redis client: pip install '.[several]'")
    if settings.database_url:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
        try:
            backend = make_url(settings.database_url).get_backend_name()
        except ArgumentError:
            raise ValueError("--database takes a SQLAlchemy URL such as postgresql://user@host:5432/maskwatch "
                             f"or sqlite:///path/history.sqlite3, got {settings.database_url!r}") from None
        if backend == "postgresql" and importlib.util.find_spec("psycopg") is None:
            raise ValueError("--database postgresql://... needs psycopg: pip install '.[several]'")
        if backend not in ("postgresql", "sqlite"):
            raise ValueError(f"--database supports postgresql:// and sqlite:/// URLs, got {backend}://")


def cmd_gen_cert(args: argparse.Namespace, settings: Settings) -> int:
    from webapp.certs import default_names, generate, instructions

    addresses = lan_addresses() + ["127.0.0.1"]
    names = default_names() + list(args.name or [])
    cert, key = generate(args.out, names, addresses + list(args.ip or []), args.days)
    print(instructions(cert, key, lan_addresses(), settings.port))
    return 0


def _add_common(p: argparse.ArgumentParser, after_command: bool = False) -> None:
    """The flags every command takes, before or after the command's name. After it they default
    to SUPPRESS, so the command's parser does not reset what was given before it."""
    kw = {"default": argparse.SUPPRESS} if after_command else {}
    p.add_argument("--model", type=Path, help="model folder (default: MASKWATCH_MODEL or model/)", **kw)
    p.add_argument("--detector", choices=DETECTORS,
                   help="face detector (default: MASKWATCH_DETECTOR or trained, the one we train)", **kw)
    p.add_argument("-v", "--verbose", action="store_true", help="log more", **kw)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maskwatch", description="Face-mask compliance monitor.")
    _add_common(p)
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, after_command=True)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("detect", parents=[common], help="run the served pipeline on image files or folders")
    d.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    d.add_argument("--json", action="store_true", help="one JSON object per image per line (JSON Lines)")
    d.add_argument("--out", type=Path, help="write annotated copies here")
    d.set_defaults(func=cmd_detect)
    s = sub.add_parser("serve", parents=[common], help="run the web app (camera page and dashboard)")
    s.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 for the LAN)")
    s.add_argument("--port", type=int, help="port (default 5000)")
    s.add_argument("--certfile", type=Path, help="TLS certificate (browsers need https for cameras)")
    s.add_argument("--keyfile", type=Path, help="TLS private key")
    s.add_argument("--async-mode", choices=CHOICES["async_mode"],
                   help="Socket.IO server mode (default threading)")
    s.add_argument("--workers", type=int, help="inference worker threads (default: one per core)")
    s.add_argument("--alerts", choices=CHOICES["alerts"],
                   help="camera page alert for people without a (correct) mask (default visual)")
    s.add_argument("--token", help="access token for pages and sockets (or MASKWATCH_TOKEN)")
    s.add_argument("--no-auth", action="store_true", default=None,
                   help="allow a non-loopback bind without a token (anyone on the network can use it)")
    s.add_argument("--redis", dest="redis_url", metavar="URL",
                   help="share live counts and alerts with other servers (redis://host:port/db)")
    s.add_argument("--database", dest="database_url", metavar="URL",
                   help="history in this SQLAlchemy database instead of the SQLite file "
                        "(postgresql://user@host:port/db for several servers)")
    s.add_argument("--server-name", help="this server's name on a shared dashboard (default: host name:port)")
    s.add_argument("--max-client-connections", type=int,
                   help="open connections one client address may hold (default 100; 0 = no limit, "
                        "behind a proxy)")
    s.add_argument("--header-timeout", type=float,
                   help="seconds a client has to send a request head, and for each read after it (default 10)")
    s.set_defaults(func=cmd_serve)
    g = sub.add_parser("gen-cert", parents=[common],
                       help="make a self-signed TLS certificate for this machine's LAN names")
    g.add_argument("--out", type=Path, default=Path("instance"), help="folder for the files (default: instance/)")
    g.add_argument("--name", action="append", help="extra DNS name to cover (repeatable)")
    g.add_argument("--ip", action="append", help="extra IP address to cover (repeatable)")
    g.add_argument("--days", type=int, default=825)
    g.set_defaults(func=cmd_gen_cert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides = {"model_dir": args.model, "detector": args.detector}
        for key in ("host", "port", "certfile", "keyfile", "async_mode", "workers", "token", "no_auth", "alerts",
                    "max_client_connections", "header_timeout", "redis_url", "database_url", "server_name"):
            overrides[key] = getattr(args, key, None)
        settings = Settings.load(overrides)
        return args.func(args, settings)
    except Exception as exc:  # noqa: BLE001 - a CLI prints one clear line, not a traceback
        from webapp.vision.classifier import ModelFilesError
        from webapp.vision.detector import DetectorUnavailable
        if isinstance(exc, (ModelFilesError, DetectorUnavailable, ValueError)):
            print(f"maskwatch: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
