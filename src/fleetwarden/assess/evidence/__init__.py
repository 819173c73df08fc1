"""Evidence collection: one parser per kind of the bundle layout, one :class:`Evidence`.

Invariants: collection never raises on a bad file. A file that cannot be read (symlink,
too big, wrong encoding, malformed) is recorded in ``Evidence.skipped`` with its reason
and its kind; a kind with nothing readable is absent from ``Evidence.present``, so the
checks needing it report MANUAL. The bundle is never written to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetwarden.assess.errors import EvidenceError
from fleetwarden.assess.evidence import _io, broker, components, documents, firmware, logs, pki
from fleetwarden.assess.evidence import inventory as inventory_parser
from fleetwarden.assess.evidence import network as network_parser
from fleetwarden.assess.evidence.types import (
    Broker,
    CertInfo,
    CrlInfo,
    Device,
    DocSet,
    Firewall,
    FirmwareImage,
    LogSummary,
    OsvRecord,
    Policy,
    Sbom,
    TlsProbe,
    VlanRow,
)

__all__ = ["Evidence", "Skipped", "collect", "debian_fingerprint"]

Progress = Callable[[str, int], None]
SYSTEM_BLOCKLIST_DIR = Path("/usr/share/openssl-blacklist")


@dataclass(frozen=True, slots=True)
class Skipped:
    path: str
    kind: str
    reason: str


@dataclass
class Evidence:
    root: str
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    devices: dict[str, Device] = field(default_factory=dict)
    inventory_problems: list[str] = field(default_factory=list)
    inventory_bad_rows: int = 0
    certs: list[CertInfo] = field(default_factory=list)
    cas: list[CertInfo] = field(default_factory=list)
    crls: list[CrlInfo] = field(default_factory=list)
    brokers: list[Broker] = field(default_factory=list)
    firewalls: list[Firewall] = field(default_factory=list)
    vlans: list[VlanRow] = field(default_factory=list)
    firmware: list[FirmwareImage] = field(default_factory=list)
    firmware_keys: dict[str, Any] = field(default_factory=dict)
    sboms: list[Sbom] = field(default_factory=list)
    vulns: list[OsvRecord] = field(default_factory=list)
    logs: list[LogSummary] = field(default_factory=list)
    policy: Policy | None = None
    docs: DocSet = field(default_factory=DocSet)
    blocklist: set[str] = field(default_factory=set)
    #: live TLS probes (evidence/probe.py), only when asked for; kind "tls_probe"
    tls_probes: list[TlsProbe] = field(default_factory=list)
    present: set[str] = field(default_factory=set)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def has(self, kind: str) -> bool:
        return kind in self.present

    def skipped_of(self, kind: str) -> list[Skipped]:
        return [s for s in self.skipped if s.kind == kind]


def debian_fingerprint(modulus: int) -> str:
    """The openssl-blacklist fingerprint: last 20 hex digits of SHA-1("Modulus=HEX\\n")."""
    line = f"Modulus={modulus:X}\n".encode()
    return hashlib.sha1(line, usedforsecurity=False).hexdigest()[20:]


def _guard(ev: Evidence, root: Path, path: Path, kind: str, fn: Callable[[Path], None]) -> None:
    try:
        fn(path)
    except EvidenceError as exc:
        ev.skipped.append(Skipped(_io.rel(root, path), kind, str(exc)))
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
        # parsers validate their input; this is the net under them, so a parser bug on a
        # hostile file still lists the file rather than ending the run
        ev.skipped.append(
            Skipped(_io.rel(root, path), kind, f"unreadable ({type(exc).__name__}: {exc})"[:300])
        )
    except OSError as exc:
        ev.skipped.append(Skipped(_io.rel(root, path), kind, f"cannot read: {exc.strerror}"))


def _files(ev: Evidence, root: Path, sub: str, kind: str, skip: tuple[str, ...] = ()) -> list[Path]:
    d = root / sub
    try:
        if not _io.check_dir(d):
            return []
    except EvidenceError as exc:
        ev.skipped.append(Skipped(sub, kind, str(exc)))
        return []
    out = []
    for p, reason in _io.walk(d, skip):
        if reason:
            ev.skipped.append(Skipped(_io.rel(root, p), kind, reason))
        else:
            out.append(p)
    return out


def collect(root: Path, progress: Progress | None = None) -> Evidence:
    """Read every part of the bundle at ``root`` that is there."""
    ev = Evidence(root=str(root))
    if root.is_symlink() or not root.is_dir():
        ev.skipped.append(Skipped(str(root), "bundle", "not a directory (or a symlink)"))
        return ev

    def step(name: str, n: int = 0) -> None:
        if progress is not None:
            progress(name, n)

    # inventory
    for name in ("inventory.csv", "inventory.jsonl"):
        p = root / name
        if p.exists() or p.is_symlink():
            step("inventory")

            def inv(p: Path) -> None:
                ev.inventory_bad_rows += inventory_parser.parse(
                    p, root, ev.devices, ev.inventory_problems, lambda n: step("inventory", n)
                )
                ev.present.add("inventory")

            _guard(ev, root, p, "inventory", inv)

    # certificates, CAs, CRLs
    for sub, kind in (("certs", "certs"), ("cas", "cas")):
        files = _files(ev, root, sub, kind)
        target = ev.certs if kind == "certs" else ev.cas
        for i, p in enumerate(files):
            if i % 1000 == 0:
                step(sub, i)

            def cert(p: Path, target: list[CertInfo] = target) -> None:
                target.extend(pki.read_certs(p, root))

            _guard(ev, root, p, kind, cert)
        if target:
            ev.present.add(kind)
    for p in _files(ev, root, "crls", "crls"):
        _guard(ev, root, p, "crls", lambda p: ev.crls.append(pki.read_crl(p, root)))
    if ev.crls:
        ev.present.add("crls")

    # broker
    step("broker")
    bfiles = _files(ev, root, "broker", "broker")
    for p in bfiles:
        if p.suffix == ".conf":
            _guard(ev, root, p, "broker", lambda p: ev.brokers.append(broker.read(p, root)))
    if ev.brokers:
        ev.present.add("broker")

    # network
    step("network")
    for p in _files(ev, root, "network", "network"):

        def net(p: Path) -> None:
            text = _io.read_text(p, _io.LIMITS["network"])
            if p.suffix.lower() == ".csv":
                ev.vlans.extend(network_parser.parse_vlans(text, _io.rel(root, p)))
                ev.present.add("vlans")
            else:
                ev.firewalls.append(network_parser.parse_firewall(text, _io.rel(root, p)))
                ev.present.add("network")

        _guard(ev, root, p, "vlans" if p.suffix.lower() == ".csv" else "network", net)

    # firmware: keys first, so images can be verified
    step("firmware")
    for p in _files(ev, root, "firmware/keys", "firmware_keys"):

        def key(p: Path) -> None:
            ev.firmware_keys[_io.rel(root, p)] = firmware.read_key(p)

        _guard(ev, root, p, "firmware_keys", key)
    if ev.firmware_keys:
        ev.present.add("firmware_keys")
    for p in _files(ev, root, "firmware", "firmware", skip=("keys",)):
        _guard(
            ev,
            root,
            p,
            "firmware",
            lambda p: ev.firmware.append(firmware.read_image(p, root, ev.firmware_keys)),
        )
    if ev.firmware:
        ev.present.add("firmware")

    # SBOMs and OSV records
    step("components")
    for p in _files(ev, root, "sbom", "sbom"):
        _guard(
            ev,
            root,
            p,
            "sbom",
            lambda p: ev.sboms.append(
                components.parse_sbom(_io.read_text(p, _io.LIMITS["json"]), _io.rel(root, p))
            ),
        )
    if ev.sboms:
        ev.present.add("sbom")
    vdir = root / "vulns"
    for p in _files(ev, root, "vulns", "vulns"):
        _guard(
            ev,
            root,
            p,
            "vulns",
            lambda p: ev.vulns.extend(
                components.parse_osv(_io.read_text(p, _io.LIMITS["json"]), _io.rel(root, p))
            ),
        )
    if vdir.is_dir() and not vdir.is_symlink() and not ev.skipped_of("vulns"):
        # an empty vulns/ directory is evidence too: "no known vulnerability records"
        ev.present.add("vulns")

    # logs
    step("logs")
    for p in _files(ev, root, "logs", "logs"):
        _guard(ev, root, p, "logs", lambda p: ev.logs.append(logs.read(p, root)))
    if ev.logs:
        ev.present.add("logs")

    # policy and documents
    pp = root / "policy.toml"
    if pp.exists() or pp.is_symlink():

        def pol(pp: Path) -> None:
            ev.policy = documents.parse_policy(
                _io.read_text(pp, _io.LIMITS["config"]), "policy.toml"
            )
            ev.present.add("policy")

        _guard(ev, root, pp, "policy", pol)
    ddir = root / "docs"
    dfiles = _files(ev, root, "docs", "docs")
    for p in dfiles:
        name = _io.rel(root, p)
        ev.docs.files.append(name)
        if documents.is_incident_plan(p.name):
            _guard(
                ev,
                root,
                p,
                "docs",
                lambda p: ev.docs.incident_plans.append(
                    documents.parse_incident_plan(
                        _io.read_text(p, _io.LIMITS["doc"]), _io.rel(root, p)
                    )
                ),
            )
        elif documents.is_disclosure_policy(p.name):
            ev.docs.disclosure_policies.append(name)
    if ddir.is_dir() and not ddir.is_symlink() and not ev.skipped_of("docs"):
        ev.present.add("docs")

    # Debian weak-key blocklist (openssl-blacklist format): bundle first, then the system's
    for p in [*_files(ev, root, "blocklists", "blocklist"), *_system_blocklists()]:
        _guard(ev, root, p, "blocklist", lambda p: _read_blocklist(ev, p))
    if ev.blocklist:
        ev.present.add("blocklist")
    step("done")
    return ev


def _system_blocklists() -> list[Path]:
    if not SYSTEM_BLOCKLIST_DIR.is_dir():
        return []
    return sorted(p for p in SYSTEM_BLOCKLIST_DIR.glob("blacklist.RSA-*") if p.is_file())


def _read_blocklist(ev: Evidence, p: Path) -> None:
    text = _io.read_text(p, _io.LIMITS["blocklist"])
    for line in text.splitlines():
        line = line.strip().lower()
        if len(line) == 20 and all(c in "0123456789abcdef" for c in line):
            ev.blocklist.add(line)
