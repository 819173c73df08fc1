from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetwarden.gateway.testpki import ScratchPKI

sys.path.insert(0, str(Path(__file__).parent))
from gw_harness import Harness  # noqa: E402


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ScratchPKI:
    return ScratchPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> ScratchPKI:
    return ScratchPKI(tmp_path_factory.mktemp("pki-other"), name="other")


@pytest.fixture
def harness(tmp_path: Path, pki: ScratchPKI, request: pytest.FixtureRequest) -> Iterator[Harness]:
    marker = request.node.get_closest_marker("gateway_settings")
    extra: dict[str, Any] = dict(marker.kwargs) if marker else {}
    if request.node.get_closest_marker("with_detect"):
        extra["with_detect"] = True
    h = Harness(tmp_path, pki, **extra)
    setup = request.node.get_closest_marker("gateway_setup")
    if setup:
        setup.args[0](h)
    h.start()
    try:
        yield h
    finally:
        h.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gateway_settings(**kw): GatewaySettings overrides")
    config.addinivalue_line("markers", "gateway_setup(fn): registry setup before start")
    config.addinivalue_line("markers", "with_detect: run the detection control beside")
