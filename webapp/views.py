"""HTTP routes: the two pages, health and stats JSON, and the npm front-end files we serve."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request, send_from_directory

from webapp import __version__
from webapp.config import PROJECT_ROOT
from webapp.history import History, HistoryUnavailable, parse_since
from webapp.stats import local_midnight
from webapp.vision.classifier import contract_members, read_contract
from webapp.vision.trained_detector import DETECTOR_FILE

bp = Blueprint("views", __name__)

NODE_MODULES = PROJECT_ROOT / "node_modules"
# Front-end libraries from npm (package-lock.json), served by us: the app needs no internet.
VENDOR_FILES = {
    "socket.io.min.js": "socket.io-client/dist/socket.io.min.js",
    "chart.umd.min.js": "chart.js/dist/chart.umd.min.js",
}


def _service():
    return current_app.extensions["maskwatch"]


@bp.get("/")
def camera():
    return render_template("camera.html", alerts=_service().settings.alerts)  # never the whole settings (token)


@bp.get("/dashboard")
def dashboard():
    return render_template("dashboard.html")


@lru_cache(maxsize=8)
def _sha256(path: Path, mtime: float) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_info(path: Path) -> dict[str, str]:
    """A model file by name and content hash: which model runs, without the server's paths."""
    return {"file": path.name, "sha256": _sha256(path, path.stat().st_mtime)}


@bp.get("/healthz")
def healthz():
    service = _service()
    model_dir = service.settings.model_dir
    detector_file = model_dir / DETECTOR_FILE
    classifier_models = [_file_info(model_dir / m["model_file"]) for m in contract_members(read_contract(model_dir))]
    return jsonify({
        "status": "ok",
        "version": __version__,
        "model": classifier_models[0],
        "classifier_models": classifier_models,
        "detector": service.settings.detector,
        "detector_model": _file_info(detector_file) if service.settings.detector == "trained" else None,
        "async_mode": service.settings.async_mode,
        "uptime_s": round(service.clock() - service.started, 1),
        "frames": service.slots.waiting(),
    })


@bp.get("/api/stats")
def stats():
    return jsonify(_service().snapshot())


def _history_rows():
    """(bucket, since, rows) of a history request; bad parameters are a 400 with the reason."""
    bucket = request.args.get("bucket", "minute")
    try:
        since = parse_since(request.args.get("since"), local_midnight())
        return bucket, since, _service().history.query(bucket, since)
    except HistoryUnavailable as exc:
        abort(503, description=str(exc))
    except ValueError as exc:
        abort(400, description=str(exc))


@bp.get("/api/history")
def history():
    bucket, since, rows = _history_rows()
    return jsonify({"bucket": bucket, "since": since.isoformat(), "rows": rows})


@bp.get("/api/history.csv")
def history_csv():
    _, _, rows = _history_rows()
    return Response(History.to_csv(rows), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=maskwatch-history.csv"})


@bp.get("/vendor/<name>")
def vendor(name: str):
    relative = VENDOR_FILES.get(name)
    if relative is None:
        abort(404)
    path = NODE_MODULES / relative
    if not path.is_file():
        abort(503, description=f"{relative} is missing: run `npm ci` (scripts/install does)")
    return send_from_directory(path.parent, path.name, max_age=3600)
