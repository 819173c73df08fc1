"""TLS client authentication with a private key that stays in a PKCS#11 token.

Python's :mod:`ssl` loads private keys from files only, and the libraries the agents use
(httpx, paho-mqtt) take a plain :class:`ssl.SSLContext`. :func:`use_token_key` makes such
a context present a certificate whose private key lives in a PKCS#11 token: the key is
loaded as an OpenSSL ``EVP_PKEY`` *handle* through the OpenSSL pkcs11 engine (OpenSC
libp11, Debian ``libengine-pkcs11-openssl``) and installed into the context's
``SSL_CTX``; every handshake signature is then made by the token. (A TPM works the same
way through a PKCS#11 module for it, e.g. tpm2-pkcs11.)

How: CPython's ``PySSLContext`` starts with ``PyObject_HEAD`` followed by ``SSL_CTX *ctx``;
the module reads that pointer and calls ``SSL_CTX_use_certificate_chain_file``,
``ENGINE_load_private_key``, ``SSL_CTX_use_PrivateKey`` and ``SSL_CTX_check_private_key``
through ctypes on the very libssl/libcrypto that ``_ssl`` has loaded. See
``docs/identity.md`` (section "Token keys for TLS") for why not a library or a provider.

Invariants:

- Nothing is done unless the interpreter is CPython, the libssl/libcrypto reached with
  ``RTLD_NOLOAD`` (so: already loaded, never a second copy) report exactly
  ``ssl.OPENSSL_VERSION``/``ssl.OPENSSL_VERSION_NUMBER``, and the ``SSL_CTX`` pointer is
  proven to be the context's: its options must follow two different values set through
  ``ctx.options`` (a distinctive bit is flipped and restored). Otherwise
  :class:`TokenTlsError`, nothing written.
- The private key never leaves the token: only a handle is loaded; no key file exists.
- The PIN is handed to the engine by its ``PIN`` control, never in the key URI, never
  logged or put in an error message; a missing or wrong PIN fails at once (a refusing
  UI method is installed, so the engine never prompts on a terminal).
- The ``SSL_CTX`` holds its own reference to the ``EVP_PKEY`` (``SSL_CTX_use_PrivateKey``
  takes one); the engine instances are cached for the process and never finished, since
  a finished engine would pull the PKCS#11 sessions from under live keys.
- One engine instance per process (libp11 cannot be bound twice), loaded through
  OpenSSL's ``dynamic`` engine and not added to the global engine list; it is bound to
  the first PKCS#11 module asked for, and a key from another module is refused.
- PKCS#11 login state belongs to the process: once the token is logged in, further keys
  from it in this process do not check the PIN again.
- Call it while setting the context up, before the context is used for connections.
"""

from __future__ import annotations

import ctypes
import os
import re
import ssl
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fleetwarden.identity.errors import KeyBackendError

#: the OpenSSL engine id of OpenSC libp11 (Debian: libengine-pkcs11-openssl)
DEFAULT_ENGINE = "pkcs11"
#: SoftHSM2's module on Debian; real devices name their token's module
DEFAULT_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")

_LABEL_MAX = 128  # far above any token's label length, small enough for an error line
_ENGINE_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_MAX_PIN = 256


class TokenTlsError(KeyBackendError):
    """A token key cannot be used for TLS; the message says why (never the PIN)."""


@dataclass(frozen=True)
class TokenKey:
    """Where a TLS client key lives: a PKCS#11 module, a token label and a key label.

    ``engine`` is an OpenSSL engine id (looked up in OpenSSL's engines directory) or the
    absolute path of an engine shared object. ``pin`` is kept out of ``repr``.
    """

    module: Path
    token_label: str
    key_label: str
    pin: bytes | None = field(default=None, repr=False)
    engine: str = DEFAULT_ENGINE

    def __post_init__(self) -> None:
        for what, value in (("token label", self.token_label), ("key label", self.key_label)):
            if not value or len(value) > _LABEL_MAX or not value.isprintable():
                raise TokenTlsError(
                    f"{what} must be 1-{_LABEL_MAX} printable characters, got {value!r}"
                )
        if self.pin is not None and (
            not self.pin or len(self.pin) > _MAX_PIN or b"\x00" in self.pin
        ):
            raise TokenTlsError(f"the PIN must be 1-{_MAX_PIN} bytes without NUL")

    def uri(self) -> str:
        """The RFC 7512 URI of the private key (without the PIN)."""

        def enc(s: str) -> str:
            return quote(s, safe="-._~")

        return f"pkcs11:token={enc(self.token_label)};object={enc(self.key_label)};type=private"


# -- the OpenSSL that the ssl module uses --------------------------------------------


def _fn(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
    try:
        f = getattr(lib, name)
    except AttributeError as exc:
        raise TokenTlsError(f"this OpenSSL has no {name} (built without engine support?)") from exc
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_READER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def _refuse(_ui: Any, _uis: Any) -> int:
    return -1  # the engine asked for a PIN: fail instead of reading a terminal


_refuse_prompt = _READER(_refuse)  # module-level: OpenSSL keeps the pointer forever


class _OpenSSL:
    """libssl/libcrypto exactly as loaded by ``_ssl`` (checked, see module docstring)."""

    def __init__(self) -> None:
        if sys.implementation.name != "cpython":
            raise TokenTlsError("token keys for TLS need CPython (they reach into _ssl)")
        major = ssl.OPENSSL_VERSION_INFO[0]
        if major != 3:
            raise TokenTlsError(f"token keys for TLS need OpenSSL 3, not {ssl.OPENSSL_VERSION}")
        mode = getattr(os, "RTLD_NOLOAD", 0) | os.RTLD_LOCAL
        try:
            crypto = ctypes.CDLL(f"libcrypto.so.{major}", mode=mode)
            libssl = ctypes.CDLL(f"libssl.so.{major}", mode=mode)
        except OSError as exc:
            raise TokenTlsError(
                "Python's ssl module does not use a shared libssl.so.3 that this process "
                "has loaded; token keys for TLS cannot be wired in"
            ) from exc
        version = _fn(crypto, "OpenSSL_version", ctypes.c_char_p, ctypes.c_int)
        version_num = _fn(crypto, "OpenSSL_version_num", ctypes.c_ulong)
        found = (version(0) or b"").decode(errors="replace")
        if found != ssl.OPENSSL_VERSION or version_num() != ssl.OPENSSL_VERSION_NUMBER:
            raise TokenTlsError(
                f"the loaded libcrypto is {found!r} but Python's ssl module reports "
                f"{ssl.OPENSSL_VERSION!r}; refusing to mix OpenSSL copies"
            )
        self.engines_dir = _engines_dir((version(5) or b"").decode(errors="replace"))
        vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        self.ERR_get_error = _fn(crypto, "ERR_get_error", ctypes.c_ulong)
        self.ERR_error_string_n = _fn(
            crypto, "ERR_error_string_n", None, ctypes.c_ulong, cp, ctypes.c_size_t
        )
        self.ERR_clear_error = _fn(crypto, "ERR_clear_error", None)
        self.ENGINE_by_id = _fn(crypto, "ENGINE_by_id", vp, cp)
        self.ENGINE_ctrl_cmd_string = _fn(crypto, "ENGINE_ctrl_cmd_string", ci, vp, cp, cp, ci)
        self.ENGINE_init = _fn(crypto, "ENGINE_init", ci, vp)
        self.ENGINE_free = _fn(crypto, "ENGINE_free", ci, vp)
        self.ENGINE_load_private_key = _fn(crypto, "ENGINE_load_private_key", vp, vp, cp, vp, vp)
        self.EVP_PKEY_free = _fn(crypto, "EVP_PKEY_free", None, vp)
        ui_create = _fn(crypto, "UI_create_method", vp, cp)
        set_reader = _fn(crypto, "UI_method_set_reader", ci, vp, _READER)
        self.no_prompt_ui = ui_create(b"fleetwarden-no-prompt")
        if not self.no_prompt_ui or set_reader(self.no_prompt_ui, _refuse_prompt) != 0:
            raise TokenTlsError("cannot create OpenSSL's refusing UI method")
        self.SSL_CTX_get_options = _fn(libssl, "SSL_CTX_get_options", ctypes.c_uint64, vp)
        self.SSL_CTX_use_certificate_chain_file = _fn(
            libssl, "SSL_CTX_use_certificate_chain_file", ci, vp, cp
        )
        self.SSL_CTX_use_PrivateKey = _fn(libssl, "SSL_CTX_use_PrivateKey", ci, vp, vp)
        self.SSL_CTX_check_private_key = _fn(libssl, "SSL_CTX_check_private_key", ci, vp)

    def errors(self) -> str:
        """Drain this thread's OpenSSL error queue into one line."""
        out: list[str] = []
        buf = ctypes.create_string_buffer(256)
        while code := self.ERR_get_error():
            self.ERR_error_string_n(code, buf, len(buf))
            out.append(buf.value.decode(errors="replace"))
        return "; ".join(out[-4:]) or "no OpenSSL error recorded"


def _engines_dir(line: str) -> Path | None:
    m = re.match(r'ENGINESDIR: "(.*)"', line)
    return Path(m.group(1)) if m else None


_LOCK = threading.Lock()
_LIB: _OpenSSL | None = None
_ENGINES: dict[str, tuple[int, Path]] = {}


def _lib() -> _OpenSSL:
    global _LIB
    if _LIB is None:
        _LIB = _OpenSSL()
    return _LIB


def _engine(lib: _OpenSSL, engine: str, module: Path) -> int:
    """The initialised engine instance, cached for the process. Caller holds ``_LOCK``."""
    if engine in _ENGINES:
        ptr, bound = _ENGINES[engine]
        if bound != module:
            raise TokenTlsError(
                f"engine {engine!r} is bound to PKCS#11 module {bound} in this process; "
                f"a key from {module} needs another process"
            )
        return ptr
    if Path(engine).is_absolute():
        so_path = Path(engine)
        where = str(so_path)
    elif _ENGINE_ID.fullmatch(engine):
        so_path = (lib.engines_dir or Path("/nonexistent")) / f"{engine}.so"
        where = f"OpenSSL's engines directory {lib.engines_dir}"
    else:
        raise TokenTlsError(f"invalid OpenSSL engine id {engine!r}")
    if not so_path.is_file():
        raise TokenTlsError(
            f"OpenSSL engine {engine!r} is not installed (no {so_path.name} in {where}); "
            "on Debian: apt install libengine-pkcs11-openssl"
        )
    if not module.is_file():
        raise TokenTlsError(f"PKCS#11 module {module} does not exist")
    e = lib.ENGINE_by_id(b"dynamic")
    if not e:
        raise TokenTlsError(f"OpenSSL's dynamic engine is unavailable: {lib.errors()}")
    ok = False
    try:
        for cmd, arg in (
            (b"SO_PATH", str(so_path).encode()),
            (b"LIST_ADD", b"0"),
            (b"LOAD", None),
        ):
            if lib.ENGINE_ctrl_cmd_string(e, cmd, arg, 0) != 1:
                raise TokenTlsError(
                    f"cannot load OpenSSL engine {engine!r} from {so_path}: {lib.errors()}"
                )
        if lib.ENGINE_ctrl_cmd_string(e, b"MODULE_PATH", str(module).encode(), 0) != 1:
            raise TokenTlsError(
                f"engine {engine!r} does not take a PKCS#11 module path (is it the pkcs11 "
                f"engine?): {lib.errors()}"
            )
        if lib.ENGINE_init(e) != 1:
            raise TokenTlsError(
                f"cannot initialise engine {engine!r} with PKCS#11 module {module}: {lib.errors()}"
            )
        ok = True
    finally:
        if not ok:
            lib.ENGINE_free(e)
    _ENGINES[engine] = (int(e), module)
    return int(e)


def _ssl_ctx_pointer(lib: _OpenSSL, ctx: ssl.SSLContext) -> int:
    """The context's ``SSL_CTX *``, proven by two option values (see module docstring)."""
    if not isinstance(ctx, ssl.SSLContext):
        raise TypeError(f"expected ssl.SSLContext, got {type(ctx).__name__}")
    base = ssl.SSLContext.__mro__[1]  # _ssl._SSLContext, the C type
    header = object.__basicsize__
    if base.__basicsize__ < header + ctypes.sizeof(ctypes.c_void_p):
        raise TokenTlsError("unexpected _ssl._SSLContext layout; refusing to reach into it")
    ptr = ctypes.c_void_p.from_address(id(ctx) + header).value
    if not ptr:
        raise TokenTlsError("this ssl.SSLContext holds no SSL_CTX")
    probe = int(ssl.OP_NO_TICKET)
    original = int(ctx.options)
    mask = (1 << 64) - 1
    try:
        seen = [int(lib.SSL_CTX_get_options(ptr)) == original & mask]
        ctx.options = ssl.Options(original ^ probe)
        seen.append(int(lib.SSL_CTX_get_options(ptr)) == (original ^ probe) & mask)
    finally:
        ctx.options = ssl.Options(original)
    if not all(seen) or int(lib.SSL_CTX_get_options(ptr)) != original & mask:
        raise TokenTlsError(
            "cannot locate the SSL_CTX inside ssl.SSLContext on this interpreter; "
            "refusing to use a token key"
        )
    return int(ptr)


def use_token_key(ctx: ssl.SSLContext, cert_file: Path, key: TokenKey) -> None:
    """Make ``ctx`` present ``cert_file`` (PEM, leaf first, then any intermediates) with
    the private key ``key`` that stays in its PKCS#11 token.

    Raises :class:`TokenTlsError` with the reason: interpreter or OpenSSL not suitable,
    engine not installed, module missing, wrong PIN or token not found, key not found,
    certificate unreadable or not matching the token key.
    """
    cert_file = Path(cert_file)
    if not cert_file.is_file():
        raise TokenTlsError(f"certificate file {cert_file} does not exist")
    with _LOCK:
        lib = _lib()
        ptr = _ssl_ctx_pointer(lib, ctx)
        lib.ERR_clear_error()
        engine = _engine(lib, key.engine, key.module)
        if lib.SSL_CTX_use_certificate_chain_file(ptr, str(cert_file).encode()) != 1:
            raise TokenTlsError(f"cannot load the certificate chain {cert_file}: {lib.errors()}")
        # The PIN goes by control, not in the URI, so it appears in no error text. Without
        # one the engine asks the refusing UI (no blind login with an empty PIN).
        if key.pin is not None and lib.ENGINE_ctrl_cmd_string(engine, b"PIN", key.pin, 0) != 1:
            lib.errors()
            raise TokenTlsError(f"engine {key.engine!r} does not take a PIN")
        pkey = lib.ENGINE_load_private_key(engine, key.uri().encode(), lib.no_prompt_ui, None)
        if not pkey:
            raise TokenTlsError(_load_failure(key, lib.errors()))
        try:
            if (
                lib.SSL_CTX_use_PrivateKey(ptr, pkey) != 1
                or lib.SSL_CTX_check_private_key(ptr) != 1
            ):
                raise TokenTlsError(
                    f"certificate {cert_file} does not match the token key {key.key_label!r} "
                    f"on token {key.token_label!r}: {lib.errors()}"
                )
        finally:
            lib.EVP_PKEY_free(pkey)  # the SSL_CTX keeps its own reference
            lib.ERR_clear_error()


def _load_failure(key: TokenKey, detail: str) -> str:
    where = f"key {key.key_label!r} on token {key.token_label!r} via {key.module}"
    low = detail.lower()
    if "unable to load pkcs#11 module" in low:
        return f"cannot load the PKCS#11 module {key.module} (not a PKCS#11 module?): {detail}"
    if key.pin is None:
        return (
            f"cannot load {where}: no PIN was given (the token may need one) or the token "
            f"or key label is unknown: {detail}"
        )
    if "pin" in low or "login" in low:
        hint = "wrong or missing PIN" if key.pin else "no PIN given"
        return f"cannot log in to token {key.token_label!r} ({hint}): {detail}"
    return f"cannot load {where} (unknown token or key label?): {detail}"
