"""Session-wide evidence bundles (built once: openssl, imgtool and key generation cost)."""

from __future__ import annotations

from pathlib import Path

import assess_bundle as bundle
import pytest


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        "dirty": bundle.build(root / "dirty", clean=False),
        "clean": bundle.build(root / "clean", clean=True),
    }
