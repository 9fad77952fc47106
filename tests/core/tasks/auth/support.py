"""Shared test material for request verification: a fixed clock, a key with its certificate, a certs server."""
from __future__ import annotations

import datetime
import http.server
import json
import threading
from pathlib import Path
from typing import Any

import google.auth.crypt
import google.auth.jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from werkzeug.datastructures import EnvironHeaders

# A fixed clock far from the real one, so nothing here depends on when the tests run.
NOW = 1_700_000_000
SECRET = "s3cret-key"
DEFERRED = "/_tasks/deferred"
QUERY_ITER = "/_tasks/queryIter"
CRON = "/_tasks/cron/default"
BODY = b'{"task": "mod.fn", "args": [1, 2]}'

AUDIENCE = "https://app.example.com"
ACCOUNT = "tasks@proj.iam.gserviceaccount.com"
KID = "key-1"


def environ_headers(headers: dict[str, str]) -> EnvironHeaders:
    environ = {"HTTP_" + key.upper().replace("-", "_"): value for key, value in headers.items()}
    return EnvironHeaders(environ)


class Key:
    """An RSA key with a self-signed certificate, as Google publishes them."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, kid)])
        start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=3650))
            .sign(self.private, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        private_pem = self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.signer = google.auth.crypt.RSASigner.from_string(private_pem, key_id=kid)

    def token(self, now: float = NOW, *, kid: str | None = None, **overrides: Any) -> str:
        """A token valid at ``now``; ``kid`` signs with this key under another key id."""
        claims: dict[str, Any] = {
            "aud": AUDIENCE,
            "iss": "https://accounts.google.com",
            "email": ACCOUNT,
            "email_verified": True,
            "sub": "1234567890",
            "iat": int(now) - 10,
            "exp": int(now) + 3590,
        }
        claims.update(overrides)
        for name in [k for k, v in claims.items() if v is None]:
            del claims[name]
        signer = self.signer if kid is None else google.auth.crypt.RSASigner(self.private, key_id=kid)
        return google.auth.jwt.encode(signer, claims).decode()


def write_certs(path: Path, *keys: Key) -> Path:
    path.write_text(json.dumps({k.kid: k.cert_pem for k in keys}))
    return path


class CertsServer:
    """A real HTTP server on a free loopback port that serves a certificates document."""

    def __init__(self) -> None:
        self.body = b"{}"
        self.status = 200
        self.cache_control: str | None = None
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.hits += 1
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                if outer.cache_control:
                    self.send_header("Cache-Control", outer.cache_control)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/oauth2/v1/certs"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def serve(self, *keys: Key) -> None:
        self.body = json.dumps({k.kid: k.cert_pem for k in keys}).encode()

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


class FakeClock:
    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value
