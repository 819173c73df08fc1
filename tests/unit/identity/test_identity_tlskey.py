"""identity.tlskey's guards: key references are validated, the PIN stays out of the URI
and repr, and the SSL_CTX pointer and the OpenSSL copy are proven before anything is
written (the real token path is tested in tests/interop/*/test_*_token.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from fleetwarden.identity import tlskey
from fleetwarden.identity.tlskey import TokenKey, TokenTlsError, use_token_key

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"token_label": ""},
        {"key_label": "x" * 129},
        {"key_label": "bad\nlabel"},
        {"pin": b""},
        {"pin": b"12\x0034"},
        {"pin": b"1" * 257},
    ],
)
def test_token_key_is_validated(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"module": MODULE, "token_label": "t", "key_label": "k"}
    with pytest.raises(TokenTlsError):
        TokenKey(**{**base, **kwargs})  # type: ignore[arg-type]


def test_uri_is_percent_encoded_and_has_no_pin() -> None:
    k = TokenKey(MODULE, "my token", "dev;1/é", pin=b"s3cret-pin")
    assert k.uri() == "pkcs11:token=my%20token;object=dev%3B1%2F%C3%A9;type=private"
    assert "s3cret" not in k.uri() and "s3cret" not in repr(k)


def test_ssl_ctx_pointer_is_proven_and_options_restored() -> None:
    lib = tlskey._lib()
    ctx = ssl.create_default_context()
    before = ctx.options
    ptr = tlskey._ssl_ctx_pointer(lib, ctx)
    assert ptr and int(lib.SSL_CTX_get_options(ptr)) == int(before)
    assert ctx.options == before
    other = ssl.create_default_context()
    assert tlskey._ssl_ctx_pointer(lib, other) != ptr


def test_wrong_layout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tlskey._lib()
    ctx = ssl.create_default_context()
    before = ctx.options
    # a pointer that does not follow the context's options is not the context's SSL_CTX
    monkeypatch.setattr(lib, "SSL_CTX_get_options", lambda _p: int(before))
    with pytest.raises(TokenTlsError, match="cannot locate the SSL_CTX"):
        tlskey._ssl_ctx_pointer(lib, ctx)
    assert ctx.options == before
    with pytest.raises(TypeError):
        tlskey._ssl_ctx_pointer(lib, object())  # type: ignore[arg-type]


def test_another_openssl_copy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssl, "OPENSSL_VERSION", "OpenSSL 9.9.9 (not this one)")
    with pytest.raises(TokenTlsError, match="refusing to mix OpenSSL copies"):
        tlskey._OpenSSL()


def test_missing_certificate_file(tmp_path: Path) -> None:
    ctx = ssl.create_default_context()
    with pytest.raises(TokenTlsError, match="does not exist"):
        use_token_key(ctx, tmp_path / "nope.pem", TokenKey(MODULE, "t", "k", pin=b"1"))


def test_invalid_engine_id(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    ctx = ssl.create_default_context()
    with pytest.raises(TokenTlsError, match="invalid OpenSSL engine id"):
        use_token_key(ctx, tmp_path / "c.pem", TokenKey(MODULE, "t", "k", engine="../evil"))
