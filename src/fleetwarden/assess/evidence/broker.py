"""Mosquitto configuration (``broker/*.conf``) with the ACL and password files it names.

Semantics follow Mosquitto 2.x: with no ``listener`` line the broker listens on
localhost:1883 only; ``allow_anonymous`` defaults to false; without
``per_listener_settings true`` the security options are global. Referenced files are
looked up in ``broker/`` by their base name (bundles hold copies, not the server's
absolute paths); a referenced file that is missing is recorded, and the checks that need
it report MANUAL.
"""

from __future__ import annotations

from pathlib import Path

from fleetwarden.assess.errors import EvidenceError
from fleetwarden.assess.evidence import _io
from fleetwarden.assess.evidence.types import AclEntry, Broker, Listener

MAX_LINES = 100_000


def _flag(value: str) -> bool:
    return value.strip().lower() in {"true", "1", "yes", "on"}


def parse_conf(text: str, path: str) -> Broker:
    b = Broker(path=path)
    current: Listener | None = None
    default = Listener(port=1883, address="127.0.0.1")
    for n, raw in enumerate(text.splitlines()[:MAX_LINES], 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        key, value = key.strip().lower(), value.strip()
        if key == "listener":
            parts = value.split()
            try:
                port = int(parts[0])
            except (IndexError, ValueError) as exc:
                raise EvidenceError(f"line {n}: listener needs a port") from exc
            current = Listener(port=port, address=parts[1] if len(parts) > 1 else None)
            b.listeners.append(current)
            continue
        target = current if (current is not None) else default
        if key == "port":  # 1.x style default listener
            try:
                default.port = int(value)
            except ValueError as exc:
                raise EvidenceError(f"line {n}: bad port") from exc
            default.address = None
        elif key == "protocol":
            target.protocol = value.lower()
        elif key in {"cafile", "capath", "certfile"} or key == "psk_hint":
            target.tls = True
        elif key == "require_certificate":
            target.require_certificate = _flag(value)
        elif key == "use_identity_as_username" or key == "use_subject_as_username":
            target.use_identity_as_username = _flag(value)
        elif key == "tls_version":
            target.tls_version = value.lower()
        elif key == "ciphers":
            target.ciphers = value
        elif key == "per_listener_settings":
            b.per_listener_settings = _flag(value)
        elif key == "allow_anonymous":
            if current is not None and b.per_listener_settings:
                current.allow_anonymous = _flag(value)
            else:
                b.allow_anonymous = _flag(value)
        elif key == "password_file":
            if current is not None and b.per_listener_settings:
                current.password_file = value
            b.password_file = b.password_file or value
        elif key == "acl_file":
            if current is not None and b.per_listener_settings:
                current.acl_file = value
            b.acl_file = b.acl_file or value
        elif key == "log_dest":
            b.log_dest.append(value.split()[0].lower() if value else "")
        elif key == "log_type":
            b.log_type.append(value.lower())
        elif key == "connection_messages":
            b.connection_messages = _flag(value)
    if not b.listeners:
        b.listeners.append(default)
    return b


def parse_acl(text: str) -> list[AclEntry]:
    out: list[AclEntry] = []
    user: str | None = None
    for n, raw in enumerate(text.splitlines()[:MAX_LINES], 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, rest = line.partition(" ")
        key = key.lower()
        rest = rest.strip()
        if key == "user":
            user = rest
        elif key in {"topic", "pattern"}:
            parts = rest.split(None, 1)
            if len(parts) == 2 and parts[0].lower() in {"read", "write", "readwrite", "deny"}:
                access, topic = parts[0].lower(), parts[1]
            else:
                access, topic = "readwrite", rest
            if not topic:
                raise EvidenceError(f"ACL line {n}: {key} without a topic")
            out.append(AclEntry(user if key == "topic" else None, key, access, topic, n))
        else:
            raise EvidenceError(f"ACL line {n}: unknown keyword {key[:20]!r}")
    return out


def parse_passwords(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines()[:MAX_LINES], 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hash_ = line.partition(":")
        if not sep or not user:
            raise EvidenceError(f"password file line {n}: expected user:hash")
        out[user] = hash_
    return out


def read(path: Path, root: Path) -> Broker:
    b = parse_conf(_io.read_text(path, _io.LIMITS["config"]), _io.rel(root, path))
    files = {"acl": b.acl_file, "passwords": b.password_file}
    for what, ref in files.items():
        if not ref:
            continue
        local = path.parent / Path(ref).name
        try:
            text = _io.read_text(local, _io.LIMITS["config"])
            if what == "acl":
                b.acl = parse_acl(text)
            else:
                b.passwords = parse_passwords(text)
        except EvidenceError as exc:
            b.missing[_io.rel(root, local)] = str(exc)
        except FileNotFoundError:
            b.missing[_io.rel(root, local)] = "referenced but not in the bundle"
    return b
