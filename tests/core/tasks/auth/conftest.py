"""Fixtures of the request verification tests: keys, a certificates file and server, a verifier."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.tasks.auth.oidc import OidcVerifier
from tests.core.tasks.auth.support import (
    ACCOUNT,
    AUDIENCE,
    KID,
    CertsServer,
    Key,
    write_certs,
)


@pytest.fixture(scope="module")
def key() -> Key:
    return Key(KID)


@pytest.fixture(scope="module")
def other_key() -> Key:
    return Key("key-2")


@pytest.fixture()
def certs_file(tmp_path: Path, key: Key) -> Path:
    return write_certs(tmp_path / "certs.json", key)


@pytest.fixture()
def oidc(certs_file: Path) -> OidcVerifier:
    return OidcVerifier(AUDIENCE, [ACCOUNT], str(certs_file))


@pytest.fixture()
def certs_server() -> Iterator[CertsServer]:
    server = CertsServer()
    try:
        yield server
    finally:
        server.stop()
