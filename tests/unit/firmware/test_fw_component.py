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
