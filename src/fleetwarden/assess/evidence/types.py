"""Typed evidence records: what each parser produces and every check reads.

Records are small slotted dataclasses (a million devices must fit in memory with room
to spare); certificate and CRL objects stay as ``cryptography`` objects so checks can
verify signatures without re-parsing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any


@dataclass(slots=True)
class Device:
    id: str
    model: str | None = None
    risk_class: str = "medium"
    sector: str | None = None
    firmware_version: str | None = None
    key_storage: str = "unknown"
    apn: str | None = None
    ip: str | None = None
    ip_fixed: bool | None = None
    allowed_cidrs: tuple[str, ...] = ()
    vlan: int | None = None
    groups: tuple[str, ...] = ()
    status: str = "active"
    password_hash: str | None = None
    open_ports: tuple[int, ...] | None = None
    debug_ports_enabled: bool | None = None
    secure_boot: bool | None = None
    last_seen: datetime | None = None


@dataclass(slots=True)
class CertInfo:
    path: str
    subject_cn: str
    issuer_cn: str
    subject: str
    issuer: str
    serial: int
    not_before: datetime
    not_after: datetime
    is_ca: bool
    key_type: str
    key_bits: int
    spki_sha256: str
    fingerprint: str
    sig_hash: str
    rsa_modulus: int | None
    obj: Any = field(repr=False, default=None)


@dataclass(slots=True)
class CrlInfo:
    path: str
    issuer: str
    last_update: datetime
    next_update: datetime | None
    revoked: frozenset[int]
    obj: Any = field(repr=False, default=None)


@dataclass(slots=True)
class Listener:
    port: int
    address: str | None = None
    protocol: str = "mqtt"
    tls: bool = False
    require_certificate: bool = False
    use_identity_as_username: bool = False
    allow_anonymous: bool | None = None
    tls_version: str | None = None
    ciphers: str | None = None
    password_file: str | None = None
    acl_file: str | None = None


@dataclass(slots=True)
class AclEntry:
    user: str | None  # None for a pattern or a topic before any user line
    kind: str  # "topic" or "pattern"
    access: str  # read, write, readwrite, deny
    topic: str
    line: int


@dataclass
class Broker:
    path: str
    listeners: list[Listener] = field(default_factory=list)
    per_listener_settings: bool = False
    allow_anonymous: bool | None = None
    password_file: str | None = None
    acl_file: str | None = None
    log_dest: list[str] = field(default_factory=list)
    log_type: list[str] = field(default_factory=list)
    connection_messages: bool = True
    acl: list[AclEntry] | None = None
    passwords: dict[str, str] | None = None
    #: referenced files that could not be read, with the reason
    missing: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class FwRule:
    chain: str
    source: str | None  # None: any source
    ports: tuple[int, ...] | None  # None: any port
    proto: str | None
    action: str  # accept, drop, reject
    line: int


@dataclass
class Firewall:
    path: str
    kind: str  # nftables or iptables
    input_policy: str  # accept or drop
    rules: list[FwRule] = field(default_factory=list)


@dataclass(slots=True)
class VlanRow:
    vlan: int
    name: str
    purpose: str
    cidr: str


@dataclass
class FirmwareImage:
    path: str
    size: int
    sha256: str
    format: str  # mcuboot or raw
    product: str
    version: tuple[int, int, int, int] | None = None
    security_counter: int | None = None
    hash_ok: bool | None = None
    signature_type: str | None = None
    signed: bool = False
    #: True valid against a trusted key, False invalid/untrusted, None: no keys to check
    signature_valid: bool | None = None
    signer: str | None = None
    private_keys: list[str] = field(default_factory=list)
    credentials: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    problem: str | None = None
    #: False for releases read from the registry (``--live``): no bytes were scanned
    scanned: bool = True

    @property
    def version_text(self) -> str:
        if self.version is None:
            return "?"
        a, b, c, d = self.version
        return f"{a}.{b}.{c}+{d}"


@dataclass(slots=True)
class Component:
    name: str
    version: str
    purl: str | None
    ecosystem: str | None


@dataclass
class Sbom:
    path: str
    subject: str
    components: list[Component]


@dataclass
class OsvRange:
    introduced: str | None
    fixed: str | None
    last_affected: str | None


@dataclass
class OsvAffected:
    ecosystem: str | None
    name: str
    versions: frozenset[str]
    ranges: list[OsvRange]


@dataclass
class OsvRecord:
    path: str
    id: str
    summary: str
    affected: list[OsvAffected]
    severity: str | None = None


@dataclass
class LogSummary:
    path: str
    lines: int = 0
    connections: int = 0
    #: client id -> distinct source addresses (capped)
    client_ips: dict[str, set[str]] = field(default_factory=dict)
    #: client ids mosquitto reported as "already connected"
    takeovers: dict[str, int] = field(default_factory=dict)
    #: client id -> username it authenticated as
    client_users: dict[str, set[str]] = field(default_factory=dict)
    anonymous_connections: int = 0


@dataclass
class Policy:
    path: str
    rotation_days: int | None = None
    max_cert_age_days: int | None = None
    expected_controls: list[str] = field(default_factory=list)
    alert_rules: list[str] = field(default_factory=list)
    alert_destinations: list[str] = field(default_factory=list)
    support_period_years: float | None = None
    telemetry_retention_days: int | None = None
    personal_data: bool | None = None
    minimum_firmware: dict[str, str] = field(default_factory=dict)
    tls_endpoints: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class IncidentPlan:
    path: str
    last_review: date | None
    last_exercise: date | None
    mentions_24h: bool
    mentions_72h: bool
    has_contact: bool


@dataclass
class DocSet:
    incident_plans: list[IncidentPlan] = field(default_factory=list)
    disclosure_policies: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass
class ProbeCert:
    """The server certificate a TLS probe read (verification off)."""

    subject: str = ""
    issuer: str = ""
    not_before: datetime | None = None
    not_after: datetime | None = None
    expired: bool = False
    not_yet_valid: bool = False
    days_left: int = 0
    self_signed: bool = False
    key_type: str = ""
    key_bits: int = 0
    signature_hash: str = ""
    weak_signature: bool = False
    error: str = ""


@dataclass
class TlsProbe:
    """One endpoint's live TLS probe (evidence/probe.py).

    ``versions`` and ``weak_ciphers`` map a name to accepted / refused / unknown / error;
    ``client_cert`` is required / not required / unknown; ``error`` is set (and
    ``reachable`` False) when the endpoint could not be probed at all.
    """

    endpoint: str
    reachable: bool = False
    error: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    weak_ciphers: dict[str, str] = field(default_factory=dict)
    client_cert: str = "unknown"
    certificate: ProbeCert | None = None
    notes: list[str] = field(default_factory=list)
