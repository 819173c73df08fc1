"""Settings: TOML in the data dir, environment over TOML, flags over both."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetwarden.errors import ConfigError
from fleetwarden.settings import load_settings


def test_defaults(data_dir: Path) -> None:
    s = load_settings()
    assert s.data_dir == data_dir
    assert s.effective_database_url == f"sqlite:///{(data_dir / 'fleetwarden.db').resolve()}"
    assert s.api_port == 8443


def test_precedence(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir.mkdir()
    (data_dir / "fleetwarden.toml").write_text('api_port = 9000\napi_host = "0.0.0.0"\n')
    assert load_settings().api_port == 9000
    monkeypatch.setenv("FLEETWARDEN_API_PORT", "9100")
    s = load_settings()
    assert (s.api_port, s.api_host) == (9100, "0.0.0.0")
    assert load_settings(api_port=9200).api_port == 9200


def test_explicit_data_dir_wins(data_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert load_settings(other).data_dir == other


@pytest.mark.parametrize(
    "content",
    [
        "api_port = 70000\n",
        "nonsense = 1\n",
        "api_port = \n",
        'data_dir = "/x"\n',
        'log_level = "loud"\n',
    ],
)
def test_bad_config_is_a_clear_error(data_dir: Path, content: str) -> None:
    data_dir.mkdir()
    (data_dir / "fleetwarden.toml").write_text(content)
    with pytest.raises(ConfigError, match="fleetwarden.toml"):
        load_settings()
