"""Helpers for the identity interop tests (a uniquely named module: several areas have a
``conftest`` module, so tests must not import from ``conftest``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_csr(device_id: str, key: Any | None = None) -> tuple[Any, bytes]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.DER)


TPM2_PKCS11 = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so"


@contextlib.contextmanager
def swtpm(state_dir: Path) -> Iterator[str]:
    """A software TPM 2.0 (swtpm) on loopback; yields its TCTI string."""
    if shutil.which("swtpm") is None:
        pytest.fail("swtpm is not installed (apt: swtpm swtpm-tools)")
    state_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port_pair()  # the swtpm TCTI talks to the control channel on port + 1
    proc = subprocess.Popen(
        ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state_dir}"]
        + ["--server", f"type=tcp,port={port},bindaddr=127.0.0.1"]
        + ["--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1"]
        + ["--flags", "not-need-init,startup-clear"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"swtpm:host=127.0.0.1,port={port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def tpm2_pkcs11_token(
    tmp_path: Path, label: str, pin: str, so_pin: str = "86420"
) -> Iterator[dict[str, str]]:
    """A software TPM 2.0 exposed as an initialised PKCS#11 token by tpm2-pkcs11;
    yields the environment that selects it (TCTI and store)."""
    if not (Path(TPM2_PKCS11).exists() and shutil.which("pkcs11-tool")):
        pytest.fail("needs libtpm2-pkcs11-1 and opensc (.ci/apt/identity.txt)")
    (tmp_path / "tpm-store").mkdir()
    with swtpm(tmp_path / "tpm") as tcti:
        env = {
            **os.environ,
            "TPM2_PKCS11_STORE": str(tmp_path / "tpm-store"),
            "TPM2_PKCS11_TCTI": tcti,
        }
        for args in (
            ["--init-token", "--label", label, "--so-pin", so_pin],
            ["--token-label", label, "--login", "--login-type", "so", "--so-pin", so_pin]
            + ["--init-pin", "--pin", pin],
        ):
            p = subprocess.run(
                ["pkcs11-tool", "--module", TPM2_PKCS11, *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert p.returncode == 0, p.stdout + p.stderr
        yield env


def _free_port_pair() -> int:
    """A free TCP port whose successor is free too (swtpm's server and control)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two consecutive free ports")
