"""``deploy/nginx.conf`` run for real, with its ports and certificate replaced, in a prefix of
its own (the several-servers tests and ``bench/loadtest.py --servers``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from bench.ports import free_port

ROOT = Path(__file__).resolve().parent.parent



class Nginx:
    """``balance`` replaces ``ip_hash``: a benchmark's clients all come from 127.0.0.1, so
    ip_hash would send them all to one server (WebSocket-only clients need no stickiness).
    ``tls=False`` listens without TLS, for the benchmark: through TLS, python-socketio's threaded
    client lost its WebSocket after 12-22 s of streaming here (while plain HTTP through the same
    nginx ran 900 frames cleanly, and browsers stream through TLS in the tests); its reader and
    writer threads share one TLS socket, which Python's ssl module does not support."""

    def __init__(self, prefix: Path, upstream_ports: list[int], cert: Path, key: Path,
                 balance: str | None = None, tls: bool = True) -> None:
        self.port = free_port()
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "tmp").mkdir(exist_ok=True)
        conf = (ROOT / "deploy" / "nginx.conf").read_text()
        servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;" for port in upstream_ports)
        conf = re.sub(r"(?m)^        server 127\.0\.0\.1:500\d .*\n(?:        server 127\.0\.0\.1:500\d .*\n)*",
                      servers + "\n", conf)
        for n in (1, 2):  # /healthz/N: the N-th server (the last one if there are fewer)
            port = upstream_ports[min(n, len(upstream_ports)) - 1]
            conf = conf.replace(f"proxy_pass http://127.0.0.1:500{n}/healthz", f"proxy_pass http://127.0.0.1:{port}/healthz")
        if balance:
            conf = conf.replace("        ip_hash;", f"        {balance};")
        conf = conf.replace("listen 8443 ssl", f"listen 127.0.0.1:{self.port}" + " ssl" * tls)
        conf = conf.replace("ssl_certificate maskwatch-cert.pem", f"ssl_certificate {cert}")
        conf = conf.replace("ssl_certificate_key maskwatch-key.pem", f"ssl_certificate_key {key}")
        assert not re.search(r"127\.0\.0\.1:500\d\b", conf), "deploy/nginx.conf changed: update bench/nginx.py"
        (prefix / "nginx.conf").write_text(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.log = prefix / "error.log"  # a file, not a pipe: a full pipe would block nginx
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", "nginx.conf"],
                                         stdout=subprocess.DEVNULL, stderr=log)
        self.url = f"{'https' if tls else 'http'}://localhost:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
