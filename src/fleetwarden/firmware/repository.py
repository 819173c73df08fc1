"""The TUF repository that distributes firmware (python-tuf Metadata API).

Roles and keys:
- ``root``: N keys, threshold T, encrypted PEM files that can be moved offline; needed
  only to initialise and to rotate keys;
- ``targets``: delegates one role per product line (paths ``<product>/*``);
- ``<product>``: one delegated role per product line, which delegates in turn to 64
  hash bins ``<product>-bin-NN`` (succinct delegation); bins are signed online when a
  release is published;
- ``snapshot`` and ``timestamp``: online keys, short expiry, re-signed by
  :meth:`Repository.refresh` (run periodically by ``fleetwarden up``).

Invariants:
- consistent snapshots: every metadata version is written as ``N.<role>.json`` (and
  timestamp as ``timestamp.json``), every target as ``<sha256>.<name>``; files are never
  rewritten in place, so any static host (or a CDN) can serve the tree;
- every change is made under an exclusive file lock and each file is written
  atomically, so the CLI (publish) and the service (refresh) can share a repository;
- a new root is signed by the threshold of the old root and of the new root, so clients
  follow the rotation (TUF spec 5.3.4).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from securesystemslib.signer import CryptoSigner, Signer, SSlibKey
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from fleetwarden._internal.files import atomic_write, ensure_private_dir, write_secret
from fleetwarden.firmware.errors import RepositoryError
from fleetwarden.firmware.keys import PASSPHRASE_ENV

T = TypeVar("T", bound=Signed)
ONLINE_ROLES = ("targets", "snapshot", "timestamp")
PRODUCT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: 2**BIN_BITS hash bins per product line (64): ~160 targets per bin at 10,000 targets
BIN_BITS = 6
#: role names a product line may not take
RESERVED = frozenset({"root", "targets", "snapshot", "timestamp"})


def valid_product(name: str) -> bool:
    """A product name is also a TUF role name; ``-bin-`` would clash with hash bins."""
    return bool(PRODUCT_RE.match(name)) and name not in RESERVED and "-bin-" not in name


_COMPACT = JSONSerializer(compact=True)


@dataclass(frozen=True)
class Expiry:
    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=365)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _new_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _pem(key: ed25519.Ed25519PrivateKey, passphrase: bytes | None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def load_signer(path: Path, passphrase: bytes | None = None) -> CryptoSigner:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RepositoryError(f"cannot read key {path}: {exc.strerror}") from exc
    if b"ENCRYPTED" in data and passphrase is None:
        env = os.environ.get(PASSPHRASE_ENV)
        if env is None:
            raise RepositoryError(f"{path} is encrypted: set {PASSPHRASE_ENV}")
        passphrase = env.encode()
    try:
        key = serialization.load_pem_private_key(data, passphrase if b"ENCRYPTED" in data else None)
    except (ValueError, TypeError) as exc:
        raise RepositoryError(f"cannot load {path}: wrong passphrase or not a key") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise RepositoryError(f"{path}: TUF keys here are Ed25519")
    return CryptoSigner(key)


def _signer(key: ed25519.Ed25519PrivateKey) -> CryptoSigner:
    return CryptoSigner(key)


def target_name(product: str, version: str, filename: str) -> str:
    return f"{product}/{version}/{filename}"


class Repository:
    """A TUF repository on disk: ``<root>/metadata``, ``<root>/targets`` and online keys
    in ``<keys>`` (root keys live wherever the operator keeps them)."""

    def __init__(self, path: Path, keys_dir: Path, expiry: Expiry | None = None) -> None:
        self.path = path
        self.metadata_dir = path / "metadata"
        self.targets_dir = path / "targets"
        self.keys_dir = keys_dir
        self.expiry = expiry or Expiry()

    # plumbing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @property
    def initialised(self) -> bool:
        return (self.metadata_dir / "timestamp.json").exists()

    def _require(self) -> None:
        if not self.initialised:
            raise RepositoryError(
                f"no TUF repository at {self.path}; run `fleetwarden firmware tuf init`"
            )

    def _latest_version(self, role: str) -> int:
        best = 0
        for p in self.metadata_dir.glob(f"*.{role}.json"):
            head = p.name.split(".", 1)[0]
            if head.isdigit():
                best = max(best, int(head))
        return best

    def load(self, role: str, cls: type[T]) -> Metadata[Any]:
        if role == "timestamp":
            path = self.metadata_dir / "timestamp.json"
        else:
            v = self._latest_version(role)
            if v == 0:
                raise RepositoryError(f"no metadata for role {role!r}")
            path = self.metadata_dir / f"{v}.{role}.json"
        if not path.exists():
            raise RepositoryError(f"no metadata for role {role!r}")
        md: Metadata[Any] = Metadata.from_file(str(path))
        if not isinstance(md.signed, cls):
            raise RepositoryError(f"{path} is not {cls.__name__} metadata")
        return md

    def _write(self, role: str, md: Metadata[Any]) -> None:
        data = md.to_bytes(_COMPACT)
        if role == "timestamp":
            atomic_write(self.metadata_dir / "timestamp.json", data)
        else:
            atomic_write(self.metadata_dir / f"{md.signed.version}.{role}.json", data)
            if role == "root":
                # the unversioned copy is what a device is provisioned with
                atomic_write(self.metadata_dir / "root.json", data)

    def _online_signer(self, role: str) -> CryptoSigner:
        return load_signer(self.keys_dir / f"{role}.pem")

    def _save_online_key(self, role: str, key: ed25519.Ed25519PrivateKey) -> SSlibKey:
        # Online keys must be usable unattended by `up`: 0600, not encrypted.
        write_secret(self.keys_dir / f"{role}.pem", _pem(key, None))
        return SSlibKey.from_crypto(key.public_key())

    def _sign_write(self, role: str, md: Metadata[Any], signers: Sequence[Signer]) -> None:
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        self._write(role, md)

    # lifecycle ----------------------------------------------------------------------

    def init(
        self, root_key_dir: Path, *, root_keys: int = 1, threshold: int = 1, passphrase: bytes
    ) -> list[Path]:
        """Create keys and the first version of every role; return the root key files."""
        if not 1 <= threshold <= root_keys <= 16:
            raise RepositoryError("need 1 <= threshold <= root keys <= 16")
        if len(passphrase) < 8:
            raise RepositoryError("the root key passphrase must have at least 8 characters")
        with self._locked():
            if self.initialised:
                raise RepositoryError(f"a TUF repository already exists at {self.path}")
            ensure_private_dir(self.keys_dir)
            ensure_private_dir(root_key_dir)
            self.metadata_dir.mkdir(parents=True, exist_ok=True)
            self.targets_dir.mkdir(parents=True, exist_ok=True)
            now = _now()
            root = Root(expires=now + self.expiry.root, consistent_snapshot=True)
            root_signers: list[Signer] = []
            files: list[Path] = []
            for i in range(root_keys):
                k = _new_key()
                p = root_key_dir / f"root-{i + 1}.pem"
                write_secret(p, _pem(k, passphrase))
                files.append(p)
                root.add_key(SSlibKey.from_crypto(k.public_key()), "root")
                root_signers.append(_signer(k))
            root.roles["root"].threshold = threshold
            for role in ONLINE_ROLES:
                root.add_key(self._save_online_key(role, _new_key()), role)
            self._sign_write("root", Metadata(root), root_signers)
            targets = Targets(expires=now + self.expiry.targets)
            targets.delegations = Delegations(keys={}, roles={})
            self._sign_write("targets", Metadata(targets), [self._online_signer("targets")])
            self._snapshot_timestamp({"targets.json": MetaFile(version=1)})
        return files

    def _snapshot_timestamp(self, changed: dict[str, MetaFile] | None = None) -> None:
        """New snapshot (with ``changed`` role versions) and a timestamp pointing at it."""
        now = _now()
        try:
            snap = self.load("snapshot", Snapshot)
            snap.signed.version += 1
        except RepositoryError:
            snap = Metadata(Snapshot(expires=now + self.expiry.snapshot))
            snap.signed.meta = {}
        snap.signed.expires = now + self.expiry.snapshot
        snap.signed.meta.update(changed or {})
        self._sign_write("snapshot", snap, [self._online_signer("snapshot")])
        try:
            ts = self.load("timestamp", Timestamp)
            ts.signed.version += 1
        except (RepositoryError, OSError):
            ts = Metadata(Timestamp(expires=now + self.expiry.timestamp))
        ts.signed.expires = now + self.expiry.timestamp
        ts.signed.snapshot_meta = MetaFile(version=snap.signed.version)
        self._sign_write("timestamp", ts, [self._online_signer("timestamp")])

    def refresh(self, *, margin: float = 0.5) -> list[str]:
        """Re-sign snapshot/timestamp whose remaining lifetime is under ``margin`` of it.

        Returns the roles re-signed. Idempotent and cheap when nothing is due.
        """
        self._require()
        with self._locked():
            now = _now()
            snap = self.load("snapshot", Snapshot)
            ts = self.load("timestamp", Timestamp)
            done: list[str] = []
            if snap.signed.expires - now < self.expiry.snapshot * margin:
                self._snapshot_timestamp()
                return ["snapshot", "timestamp"]
            if ts.signed.expires - now < self.expiry.timestamp * margin:
                ts.signed.version += 1
                ts.signed.expires = now + self.expiry.timestamp
                self._sign_write("timestamp", ts, [self._online_signer("timestamp")])
                done.append("timestamp")
            return done

    # targets ------------------------------------------------------------------------

    def _product_key_path(self, product: str) -> Path:
        return self.keys_dir / f"product-{product}.pem"

    def _ensure_delegation(self, product: str) -> None:
        """Delegate ``<product>/*`` from targets to a role named after the product."""
        targets = self.load("targets", Targets)
        dele = targets.signed.delegations
        if dele is not None and dele.roles and product in dele.roles:
            return
        key = _new_key()
        write_secret(self._product_key_path(product), _pem(key, None))
        pub = SSlibKey.from_crypto(key.public_key())
        if dele is None or dele.roles is None:
            targets.signed.delegations = Delegations(keys={}, roles={})
            dele = targets.signed.delegations
        assert dele.roles is not None
        dele.keys[pub.keyid] = pub
        dele.roles[product] = DelegatedRole(
            name=product,
            keyids=[pub.keyid],
            threshold=1,
            terminating=True,
            paths=[f"{product}/*", f"{product}/*/*"],
        )
        targets.signed.version += 1
        targets.signed.expires = _now() + self.expiry.targets
        self._sign_write("targets", targets, [self._online_signer("targets")])
        # The product role holds no targets itself: it delegates to 2**BIN_BITS hash
        # bins (TUF succinct delegation, as in PEP 458), so a client verifies one small
        # bin instead of canonicalising every target of the product line.
        bins_key = _new_key()
        write_secret(self._bins_key_path(product), _pem(bins_key, None))
        bins_pub = SSlibKey.from_crypto(bins_key.public_key())
        role = Metadata(Targets(expires=_now() + self.expiry.targets))
        role.signed.delegations = Delegations(
            keys={bins_pub.keyid: bins_pub},
            succinct_roles=SuccinctRoles(
                keyids=[bins_pub.keyid],
                threshold=1,
                bit_length=BIN_BITS,
                name_prefix=f"{product}-bin",
            ),
        )
        self._sign_write(product, role, [load_signer(self._product_key_path(product))])
        changed = {
            "targets.json": MetaFile(version=targets.signed.version),
            f"{product}.json": MetaFile(version=1),
        }
        bins_signer = _signer(bins_key)
        assert role.signed.delegations.succinct_roles is not None
        for name in role.signed.delegations.succinct_roles.get_roles():
            self._sign_write(
                name, Metadata(Targets(expires=_now() + self.expiry.targets)), [bins_signer]
            )
            changed[f"{name}.json"] = MetaFile(version=1)
        self._snapshot_timestamp(changed)

    def _bins_key_path(self, product: str) -> Path:
        return self.keys_dir / f"product-{product}-bins.pem"

    def _bin_of(self, product: str, name: str) -> str:
        role = self.load(product, Targets)
        dele = role.signed.delegations
        if dele is None or dele.succinct_roles is None:
            raise RepositoryError(f"product role {product} has no hash-bin delegation")
        return str(dele.succinct_roles.get_role_for_target(name))

    def targets_of(self, product: str) -> dict[str, TargetFile]:
        """Every target of a product line (all bins)."""
        role = self.load(product, Targets)
        dele = role.signed.delegations
        out: dict[str, TargetFile] = {}
        if dele is not None and dele.succinct_roles is not None:
            for name in dele.succinct_roles.get_roles():
                out.update(self.load(name, Targets).signed.targets)
        return out

    def add_target(
        self, product: str, name: str, source: Path, custom: dict[str, Any] | None = None
    ) -> TargetFile:
        """Copy ``source`` in as target ``name`` (under ``<product>/``) and publish it."""
        return self.add_targets(product, [(name, source, custom)])[0]

    def add_targets(
        self, product: str, items: Sequence[tuple[str, Path, dict[str, Any] | None]]
    ) -> list[TargetFile]:
        """Add several targets in one new version of the product role (one signature)."""
        self._require()
        if not valid_product(product):
            raise RepositoryError(f"invalid product name {product!r}")
        for name, _, _ in items:
            if not name.startswith(f"{product}/") or ".." in name.split("/"):
                raise RepositoryError(f"target {name!r} must live under {product}/")
        with self._locked():
            self._ensure_delegation(product)
            bins: dict[str, Metadata[Any]] = {}
            out = []
            for name, source, custom in items:
                tf = self._copy_in(name, source)
                if custom:
                    tf.unrecognized_fields["custom"] = custom
                b = self._bin_of(product, name)
                if b not in bins:
                    bins[b] = self.load(b, Targets)
                bins[b].signed.targets[name] = tf
                out.append(tf)
            signer = load_signer(self._bins_key_path(product))
            changed = {}
            for b, md in bins.items():
                md.signed.version += 1
                md.signed.expires = _now() + self.expiry.targets
                self._sign_write(b, md, [signer])
                changed[f"{b}.json"] = MetaFile(version=md.signed.version)
            self._snapshot_timestamp(changed)
            return out

    def _copy_in(self, name: str, source: Path) -> TargetFile:
        h = hashlib.sha256()
        length = 0
        parent = self.targets_dir / os.path.dirname(name)
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{os.path.basename(name)}.partial"
        try:
            with source.open("rb") as src, tmp.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    dst.write(chunk)
                    length += len(chunk)
            digest = h.hexdigest()
            os.replace(tmp, parent / f"{digest}.{os.path.basename(name)}")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return TargetFile(length=length, hashes={"sha256": digest}, path=name)

    def target_path(self, name: str) -> Path | None:
        """Local file of a published target (for the DDI artifact download)."""
        product = name.split("/", 1)[0]
        try:
            role = self.load(self._bin_of(product, name), Targets)
        except (RepositoryError, OSError):
            return None
        tf = role.signed.targets.get(name)
        if tf is None:
            return None
        p = (
            self.targets_dir
            / os.path.dirname(name)
            / (f"{tf.hashes['sha256']}.{os.path.basename(name)}")
        )
        return p if p.exists() else None

    # key rotation -------------------------------------------------------------------

    def _new_root(self, old_signers: Sequence[Signer]) -> Metadata[Root]:
        root = self.load("root", Root)
        root.signed.version += 1
        root.signed.expires = _now() + self.expiry.root
        return root

    def rotate_online(self, role: str, root_signers: Sequence[Signer]) -> None:
        """Replace the key of an online role (targets, snapshot, timestamp)."""
        if role not in ONLINE_ROLES:
            raise RepositoryError(f"online roles are {', '.join(ONLINE_ROLES)}")
        self._require()
        with self._locked():
            root = self._new_root(root_signers)
            for keyid in list(root.signed.roles[role].keyids):
                root.signed.revoke_key(keyid, role)
            root.signed.add_key(self._save_online_key(role, _new_key()), role)
            self._check_threshold(root, root_signers)
            self._sign_write("root", root, list(root_signers))
            if role == "targets":
                t = self.load("targets", Targets)
                t.signed.version += 1
                self._sign_write("targets", t, [self._online_signer("targets")])
                self._snapshot_timestamp({"targets.json": MetaFile(version=t.signed.version)})
            else:
                self._snapshot_timestamp()

    def rotate_root(
        self,
        old_signers: Sequence[Signer],
        new_key_dir: Path,
        *,
        root_keys: int,
        threshold: int,
        passphrase: bytes,
    ) -> list[Path]:
        """Replace every root key; the new root is signed by old and new thresholds."""
        if not 1 <= threshold <= root_keys <= 16:
            raise RepositoryError("need 1 <= threshold <= root keys <= 16")
        self._require()
        ensure_private_dir(new_key_dir)
        with self._locked():
            root = self._new_root(old_signers)
            self._check_threshold(root, old_signers)
            for keyid in list(root.signed.roles["root"].keyids):
                root.signed.revoke_key(keyid, "root")
            new_signers: list[Signer] = []
            files: list[Path] = []
            for i in range(root_keys):
                k = _new_key()
                p = new_key_dir / f"root-v{root.signed.version}-{i + 1}.pem"
                write_secret(p, _pem(k, passphrase))
                files.append(p)
                root.signed.add_key(SSlibKey.from_crypto(k.public_key()), "root")
                new_signers.append(_signer(k))
            root.signed.roles["root"].threshold = threshold
            self._sign_write("root", root, [*old_signers, *new_signers])
        return files

    def _check_threshold(self, root: Metadata[Root], signers: Sequence[Signer]) -> None:
        # The *current* root's keys must reach its threshold, or clients would refuse.
        current = self.load("root", Root)
        role = current.signed.roles["root"]
        ok = {s.public_key.keyid for s in signers} & set(role.keyids)
        if len(ok) < role.threshold:
            raise RepositoryError(
                f"need {role.threshold} of the current root keys, got {len(ok)} valid"
            )

    def copy_trusted_root(self, dest: Path) -> None:
        """Provision a device with the initial trusted root (``1.root.json``)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.metadata_dir / "1.root.json", dest)
