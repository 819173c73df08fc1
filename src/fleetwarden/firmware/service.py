"""Firmware products, trusted keys and release ingestion (control C6, mistake M2).

Invariants:
- :meth:`FirmwareService.publish` records a release only after the image verified
  against one of the product's trusted, unrevoked keys, and only when both its version
  and its security counter are strictly higher than those of every earlier release of
  the product (server-side anti-rollback, which imgtool does not enforce);
- the release row, its TUF target and its event are one unit: the target is added
  inside the registry transaction, so a TUF failure leaves no row, and a refused image
  leaves nothing but a refusal event (written in a transaction of its own);
- the image is read twice at most (verify, copy into the repository), in chunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetwarden.errors import ConflictError, NotFoundError, ValidationError
from fleetwarden.events import Activity, Severity, Status, api_activity
from fleetwarden.firmware.errors import DowngradeError, ImageRejectedError
from fleetwarden.firmware.image import ImageVersion, VerifiedImage, verify_image
from fleetwarden.firmware.keys import PublicKey, algorithm_of, key_id, load_public_key, public_pem
from fleetwarden.firmware.models import FirmwareKey, FirmwareProduct, FirmwareRelease
from fleetwarden.firmware.repository import Expiry, Repository, target_name, valid_product
from fleetwarden.registry import Actor, Registry
from fleetwarden.settings import Settings

FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ReleaseOut:
    product: str
    version: str
    security_counter: int
    size: int
    sha256: str
    digest: str
    key_id: str
    target_name: str
    status: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["created_at"] = self.created_at.isoformat()
        return d


@dataclass(frozen=True)
class KeyOut:
    product: str
    key_id: str
    algorithm: str
    label: str | None
    revoked: bool


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def release_out(product: str, r: FirmwareRelease) -> ReleaseOut:
    return ReleaseOut(
        product=product,
        version=r.version,
        security_counter=r.security_counter,
        size=r.size,
        sha256=r.sha256,
        digest=r.digest,
        key_id=r.key_id,
        target_name=r.target_name,
        status=r.status,
        created_at=_aware(r.created_at),
    )


def repository_for(settings: Settings) -> Repository:
    fw = settings.firmware
    from datetime import timedelta

    return Repository(
        settings.data_dir / "firmware" / "tuf",
        settings.data_dir / "firmware" / "tuf-keys",
        Expiry(
            root=timedelta(seconds=fw.root_expiry_seconds),
            targets=timedelta(seconds=fw.targets_expiry_seconds),
            snapshot=timedelta(seconds=fw.snapshot_expiry_seconds),
            timestamp=timedelta(seconds=fw.timestamp_expiry_seconds),
        ),
    )


def _event(
    actor: Actor,
    operation: str,
    message: str,
    *,
    activity: Activity = Activity.CREATE,
    ok: bool = True,
    resources: list[dict[str, Any]] | None = None,
    severity: Severity = Severity.INFORMATIONAL,
) -> Any:
    return api_activity(
        operation=operation,
        activity=activity,
        actor=actor.name,
        message=message,
        status=Status.SUCCESS if ok else Status.FAILURE,
        resources=resources or [],
        src_ip=actor.src_ip,
        severity=severity,
    )


class FirmwareService:
    """Products, keys and releases, on the registry and the TUF repository."""

    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self.repo = repository_for(settings)

    # products and keys --------------------------------------------------------------

    def _product(self, s: Session, name: str) -> FirmwareProduct:
        p = s.scalar(select(FirmwareProduct).where(FirmwareProduct.name == name))
        if p is None:
            raise NotFoundError(f"unknown firmware product {name!r}")
        return p

    def add_product(self, name: str, actor: Actor, description: str | None = None) -> None:
        if not valid_product(name):
            raise ValidationError(
                "product names are 1-64 lowercase letters, digits, '-' or '_' (first a letter "
                "or digit), not a TUF role name (root, targets, snapshot, timestamp), without -bin-"
            )
        with self.registry.session() as s:
            if s.scalar(select(FirmwareProduct).where(FirmwareProduct.name == name)):
                raise ConflictError(f"firmware product {name!r} already exists")
            s.add(FirmwareProduct(name=name, description=description))
            self.registry.record(
                s,
                _event(
                    actor,
                    "firmware.product.add",
                    f"firmware product {name} added",
                    resources=[{"type": "firmware_product", "uid": name}],
                ),
            )

    def list_products(self) -> list[str]:
        with self.registry.session() as s:
            return list(s.scalars(select(FirmwareProduct.name).order_by(FirmwareProduct.name)))

    def trust_key(
        self, product: str, key_data: bytes, actor: Actor, label: str | None = None
    ) -> KeyOut:
        key = load_public_key(key_data)
        kid = key_id(key)
        with self.registry.session() as s:
            p = self._product(s, product)
            if s.scalar(
                select(FirmwareKey).where(FirmwareKey.product_id == p.id, FirmwareKey.key_id == kid)
            ):
                raise ConflictError(f"key {kid[:16]} is already trusted for {product}")
            s.add(
                FirmwareKey(
                    product_id=p.id,
                    key_id=kid,
                    algorithm=algorithm_of(key),
                    public_pem=public_pem(key),
                    label=label,
                )
            )
            self.registry.record(
                s,
                _event(
                    actor,
                    "firmware.key.trust",
                    f"signing key {kid[:16]} trusted for {product}",
                    resources=[{"type": "firmware_key", "uid": kid, "product": product}],
                    severity=Severity.LOW,
                ),
            )
        return KeyOut(product, kid, algorithm_of(key), label, False)

    def revoke_key(self, product: str, kid: str, actor: Actor) -> None:
        with self.registry.session() as s:
            p = self._product(s, product)
            k = s.scalar(
                select(FirmwareKey).where(
                    FirmwareKey.product_id == p.id, FirmwareKey.key_id.startswith(kid)
                )
            )
            if k is None:
                raise NotFoundError(f"no key {kid!r} for {product}")
            k.revoked_at = datetime.now(UTC)
            self.registry.record(
                s,
                _event(
                    actor,
                    "firmware.key.revoke",
                    f"signing key {k.key_id[:16]} revoked for {product}",
                    activity=Activity.UPDATE,
                    resources=[{"type": "firmware_key", "uid": k.key_id, "product": product}],
                    severity=Severity.MEDIUM,
                ),
            )

    def list_keys(self, product: str) -> list[KeyOut]:
        with self.registry.session() as s:
            p = self._product(s, product)
            rows = s.scalars(select(FirmwareKey).where(FirmwareKey.product_id == p.id))
            return [
                KeyOut(product, k.key_id, k.algorithm, k.label, k.revoked_at is not None)
                for k in rows
            ]

    def trusted_keys(self, product: str) -> dict[str, PublicKey]:
        with self.registry.session() as s:
            p = self._product(s, product)
            rows = s.scalars(
                select(FirmwareKey).where(
                    FirmwareKey.product_id == p.id, FirmwareKey.revoked_at.is_(None)
                )
            )
            return {k.key_id: load_public_key(k.public_pem.encode()) for k in rows}

    # releases -----------------------------------------------------------------------

    def _refuse(self, actor: Actor, product: str, image: Path, reason: str) -> None:
        with self.registry.session() as s:
            self.registry.record(
                s,
                _event(
                    actor,
                    "firmware.publish",
                    f"firmware for {product} refused: {reason}",
                    ok=False,
                    severity=Severity.MEDIUM,
                    resources=[{"type": "firmware_image", "name": image.name, "product": product}],
                ),
            )

    def publish(
        self,
        image: Path,
        product: str,
        version: str,
        actor: Actor,
        *,
        filename: str | None = None,
    ) -> ReleaseOut:
        """Verify, check anti-rollback, add to TUF, record; see module invariants."""
        try:
            wanted = ImageVersion.parse(version)
            keys = self.trusted_keys(product)
            if not keys:
                raise ImageRejectedError(f"product {product} has no trusted signing key")
            verified = verify_image(image, keys, max_size=self.settings.firmware.max_image_bytes)
            self._check_metadata(verified, wanted)
            fname = filename or f"{product}-{verified.version}.bin"
            if not FILENAME_RE.match(fname):
                raise ValidationError(f"invalid file name {fname!r}")
            return self._record(image, product, verified, fname, actor)
        except (ImageRejectedError, ValidationError, ConflictError, NotFoundError) as exc:
            self._refuse(actor, product, image, str(exc))
            raise

    @staticmethod
    def _check_metadata(v: VerifiedImage, wanted: ImageVersion) -> None:
        if v.version != wanted:
            raise ImageRejectedError(
                f"image header says version {v.version}, not {wanted} (mismatched release)"
            )
        if v.security_counter is None:
            raise ImageRejectedError(
                "image has no security counter TLV; sign with --security-counter "
                "(imgtool: -s N) so devices can refuse downgrades"
            )

    def _record(
        self, image: Path, product: str, v: VerifiedImage, fname: str, actor: Actor
    ) -> ReleaseOut:
        assert v.security_counter is not None
        with self.registry.session() as s:
            p = s.scalar(
                select(FirmwareProduct)
                .where(FirmwareProduct.name == product)
                .with_for_update()  # serialise concurrent publishes of one product
            )
            if p is None:
                raise NotFoundError(f"unknown firmware product {product!r}")
            rows = list(
                s.scalars(select(FirmwareRelease).where(FirmwareRelease.product_id == p.id))
            )
            if rows:
                newest = max(rows, key=lambda r: (r.v_major, r.v_minor, r.v_revision, r.v_build))
                newest_v = ImageVersion(
                    newest.v_major, newest.v_minor, newest.v_revision, newest.v_build
                )
                top_counter = max(r.security_counter for r in rows)
                if v.version.key() <= newest_v.key():
                    raise DowngradeError(
                        f"version {v.version} is not higher than {newest_v}, the newest "
                        f"release of {product}"
                    )
                if v.security_counter <= top_counter:
                    raise DowngradeError(
                        f"security counter {v.security_counter} is not higher than "
                        f"{top_counter}, the highest published for {product}"
                    )
            name = target_name(product, str(v.version), fname)
            rel = FirmwareRelease(
                product_id=p.id,
                version=str(v.version),
                v_major=v.version.major,
                v_minor=v.version.minor,
                v_revision=v.version.revision,
                v_build=v.version.build,
                security_counter=v.security_counter,
                size=v.size,
                sha256=v.file_sha256.hex(),
                digest=v.digest.hex(),
                key_id=v.key_id,
                target_name=name,
                status="published",
            )
            s.add(rel)
            s.flush()
            self.registry.record(
                s,
                _event(
                    actor,
                    "firmware.publish",
                    f"firmware {product} {v.version} (counter {v.security_counter}) published",
                    resources=[
                        {
                            "type": "firmware_release",
                            "uid": name,
                            "product": product,
                            "version": str(v.version),
                            "security_counter": v.security_counter,
                            "sha256": v.file_sha256.hex(),
                            "key_id": v.key_id,
                        }
                    ],
                ),
            )
            tf = self.repo.add_target(
                product,
                name,
                image,
                custom={
                    "version": str(v.version),
                    "security_counter": v.security_counter,
                    "mcuboot_digest": v.digest.hex(),
                },
            )
            if tf.hashes.get("sha256") != v.file_sha256.hex():
                raise ImageRejectedError(f"{image} changed while it was being published")
            return release_out(product, rel)

    def list_releases(self, product: str) -> list[ReleaseOut]:
        with self.registry.session() as s:
            p = self._product(s, product)
            rows = s.scalars(
                select(FirmwareRelease)
                .where(FirmwareRelease.product_id == p.id)
                .order_by(
                    FirmwareRelease.v_major,
                    FirmwareRelease.v_minor,
                    FirmwareRelease.v_revision,
                    FirmwareRelease.v_build,
                )
            )
            return [release_out(product, r) for r in rows]

    def get_release(self, product: str, version: str) -> ReleaseOut:
        with self.registry.session() as s:
            p = self._product(s, product)
            r = s.scalar(
                select(FirmwareRelease).where(
                    FirmwareRelease.product_id == p.id, FirmwareRelease.version == version
                )
            )
            if r is None:
                raise NotFoundError(f"no release {version} of {product}")
            return release_out(product, r)
