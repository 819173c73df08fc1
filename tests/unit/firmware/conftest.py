from __future__ import annotations

import os
from pathlib import Path

import pytest

import fleetwarden.firmware.models  # noqa: F401  (registers the firmware tables)
from fleetwarden.firmware.keys import FileSigner, generate_key


@pytest.fixture(params=["ecdsa-p256", "ed25519"])
def signer(request: pytest.FixtureRequest) -> FileSigner:
    return FileSigner(generate_key(request.param))


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    p = tmp_path / "raw.bin"
    p.write_bytes(os.urandom(70_000))
    return p
