"""``maskwatch gen-cert``: a self-signed TLS certificate for this machine's LAN names.

Phones only give the camera to https pages, and a LAN machine has no public certificate, so
the server makes its own: valid for ``localhost``, the host name and every LAN address, and
marked as its own CA so a phone can be told to trust it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def generate(out_dir: Path, names: list[str], addresses: list[str], days: int = 825) -> tuple[Path, Path]:
    """Write ``maskwatch-cert.pem`` and ``maskwatch-key.pem`` (0600) into ``out_dir``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"maskwatch on {names[0]}"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "maskwatch (self-signed)")])
    san = [x509.DNSName(n) for n in dict.fromkeys(names)]
    san += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(addresses)]
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))  # Apple caps trusted TLS certs at 825 days
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / "maskwatch-cert.pem", out_dir / "maskwatch-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def default_names() -> list[str]:
    host = socket.gethostname()
    names = ["localhost", host]
    if "." not in host:
        names.append(f"{host}.local")  # mDNS name phones can resolve on most LANs
    return names


def instructions(cert: Path, key: Path, addresses: list[str], port: int = 5000) -> str:
    url = f"https://{addresses[0] if addresses else 'THIS-MACHINE'}:{port}/"
    return f"""wrote {cert}
  and {key} (private: keep it on this machine)

Start the server with it:
  maskwatch serve --host 0.0.0.0 --token YOUR-TOKEN --certfile {cert} --keyfile {key}
and open {url} on the phone or laptop at the entrance.

Make the device trust the certificate (once), or it will warn on every visit:
  iPhone/iPad: send {cert.name} to the device (AirDrop, mail), open it, then Settings > General >
    VPN & Device Management > install the profile, and Settings > General > About >
    Certificate Trust Settings > switch on full trust for "maskwatch".
  Android: Settings > Security > Encryption & credentials > Install a certificate >
    CA certificate, pick {cert.name}.
  Laptop (Chrome/Edge/Firefox): import {cert.name} as a trusted authority in the browser's or
    system's certificate settings; or accept the warning once per browser.
"""
