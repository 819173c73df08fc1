"""Build the broker plugin from its C source (never a committed binary).

The shared object is compiled with the system ``gcc`` against the Debian
``mosquitto-dev`` headers, OpenSSL and uthash, into ``<data-dir>/gateway/`` under a name
derived from the source's SHA-256, so an upgraded source is rebuilt and an unchanged one
is reused. Missing tools produce an error naming the Debian packages to install.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from fleetwarden.gateway.errors import BrokerMissingError, GatewayError

BUILD_PACKAGES = "gcc mosquitto-dev libmosquitto-dev libssl-dev uthash-dev"
_HEADERS = ("mosquitto_broker.h", "mosquitto.h", "openssl/x509.h", "uthash.h")


def plugin_source() -> bytes:
    return resources.files("fleetwarden.gateway").joinpath("plugin/fw_gateway.c").read_bytes()


def build_plugin(out_dir: Path, *, cc: str = "gcc") -> Path:
    """Compile the plugin if needed; return the path of the shared object."""
    src = plugin_source()
    digest = hashlib.sha256(src).hexdigest()[:16]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"fw_gateway-{digest}.so"
    if target.exists():
        return target
    if shutil.which(cc) is None:
        raise BrokerMissingError(
            f"cannot build the gateway plugin: {cc} not found (apt-get install {BUILD_PACKAGES})"
        )
    missing = [h for h in _HEADERS if not Path("/usr/include", h).exists()]
    if missing:
        raise BrokerMissingError(
            f"cannot build the gateway plugin: headers {', '.join(missing)} missing "
            f"(apt-get install {BUILD_PACKAGES})"
        )
    src_path = out_dir / f"fw_gateway-{digest}.c"
    src_path.write_bytes(src)
    tmp = out_dir / f".{target.name}.{os.getpid()}.tmp"
    cmd = [cc, "-O2", "-Wall", "-fPIC", "-shared", "-o", str(tmp), str(src_path), "-lcrypto"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise GatewayError(f"gateway plugin build failed:\n{proc.stderr.strip()[:4000]}")
    tmp.replace(target)  # atomic: a concurrent builder never sees half a library
    return target
