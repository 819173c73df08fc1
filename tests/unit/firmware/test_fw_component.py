"""The firmware component of `up`: re-signs the TUF timestamp when it is due."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from tuf.api.metadata import Timestamp

from fleetwarden.firmware.component import FirmwareComponent
from fleetwarden.firmware.service import repository_for
from fleetwarden.settings import Settings


def test_refresh_once_resigns_due_timestamp(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    comp = FirmwareComponent()
    comp._ctx = SimpleNamespace(settings=settings)  # type: ignore[assignment]
    assert asyncio.run(comp.refresh_once()) == []  # no repository yet: nothing to do
    repo = repository_for(settings)
    repo.init(tmp_path / "rk", passphrase=b"root passphrase")
    assert asyncio.run(comp.refresh_once()) == []  # fresh: nothing due
    ts = repo.load("timestamp", Timestamp)
    ts.signed.version += 1
    ts.signed.expires = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    repo._sign_write("timestamp", ts, [repo._online_signer("timestamp")])
    assert asyncio.run(comp.refresh_once()) == ["timestamp"]
    assert repo.load("timestamp", Timestamp).signed.expires > datetime.now(UTC) + timedelta(
        hours=12
    )


def test_settings_from_env(data_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fleetwarden.errors import ConfigError
    from fleetwarden.settings import load_settings

    monkeypatch.setenv("FLEETWARDEN_FIRMWARE__DDI_TENANT", "acme")
    monkeypatch.setenv("FLEETWARDEN_FIRMWARE__TIMESTAMP_EXPIRY_SECONDS", "3600")
    s = load_settings()
    assert s.firmware.ddi_tenant == "acme"
    assert s.firmware.timestamp_expiry_seconds == 3600
    monkeypatch.setenv("FLEETWARDEN_FIRMWARE__DDI_POLLING_INTERVAL", "5 minutes")
    import pytest

    with pytest.raises(ConfigError):
        load_settings()
