"""Build evidence bundles for the tests with real tools: openssl, imgtool, cryptography.

``build(root, clean=...)`` writes a bundle; the dirty one plants every issue of the
issue's "Done when" (shared keys, weak keys, expired and revoked certificates, an
anonymous listener, an open firewall, unsigned and downgraded firmware, no incident
plan) plus a few more; the clean one has none.

openssl makes the CA, the device keys and certificates; cryptography makes what openssl's
command line cannot make without a CA database (a backdated certificate, a CRL) and the
ROCA-structured key; imgtool (MCUboot's signing tool, from PyPI) signs the images.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from fleetwarden.assess.checks._util import ROCA_PRIMES
from fleetwarden.assess.evidence import debian_fingerprint

IMGTOOL = str(Path(sys.executable).with_name("imgtool"))
NOW = datetime.now(UTC)
TODAY = NOW.date().isoformat()


def sh(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(args, check=True, capture_output=True, cwd=cwd)


def make_ca(d: Path) -> tuple[Path, Path]:
    key, cert = d / "ca.key", d / "ca.pem"
    sh("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    sh("openssl", "req", "-x509", "-new", "-key", str(key), "-subj", "/CN=Fleet Device CA",
       "-days", "3650", "-sha256", "-out", str(cert),
       "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    return key, cert


def device_cert(
    work: Path, ca: tuple[Path, Path], cn: str, serial: int, *, key: Path | None = None,
    keytype: str = "ec", days: int = 200,
) -> tuple[Path, Path]:  # fmt: skip
    key = key or work / f"{cn}.key"
    if not key.exists():
        if keytype == "ec":
            sh("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
        else:
            sh("openssl", "genrsa", "-out", str(key), keytype)
    csr = work / f"{cn}.csr"
    sh("openssl", "req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-out", str(csr))
    ext = work / "dev.ext"
    ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=clientAuth\n")  # fmt: skip
    out = work / f"{cn}.pem"
    sh("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
       "-set_serial", str(serial), "-days", str(days), "-sha256", "-extfile", str(ext), "-out", str(out))  # fmt: skip
    return key, out


def _ca_objs(ca: tuple[Path, Path]) -> tuple[object, x509.Certificate]:
    k = serialization.load_pem_private_key(ca[0].read_bytes(), None)
    c = x509.load_pem_x509_certificate(ca[1].read_bytes())
    return k, c


def crypto_cert(
    ca: tuple[Path, Path], cn: str, serial: int, key: object, nb: datetime, na: datetime
) -> bytes:
    ca_key, ca_cert = _ca_objs(ca)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(serial)
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def crl(ca: tuple[Path, Path], serials: list[int]) -> bytes:
    ca_key, ca_cert = _ca_objs(ca)
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(NOW - timedelta(hours=1))
        .next_update(NOW + timedelta(days=7))
    )
    for s in serials:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(s)
            .revocation_date(NOW - timedelta(days=1))
            .build()
        )
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def _is_prime(n: int, rng: random.Random) -> bool:
    if n < 4:
        return n in (2, 3)
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(24):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def roca_key(bits: int = 2048, seed: int = 7) -> rsa.RSAPrivateKey:
    """An RSA key with the structure of the Infineon RSALib keys: p = k*M + (65537^a mod M)."""
    rng = random.Random(seed)
    m = 1
    for p in ROCA_PRIMES:
        m *= p
    half = bits // 2

    def prime() -> int:
        while True:
            # p in [0.75, 1) x 2^half, so p*q always has exactly ``bits`` bits
            k = rng.randrange(3 * (1 << half) // (4 * m) + 1, (1 << half) // m - 1)
            cand = k * m + pow(65537, rng.randrange(1, 1 << 20), m)
            if cand.bit_length() == half and (cand - 1) % 65537 and _is_prime(cand, rng):
                return cand

    p, q = prime(), prime()
    e = 65537
    phi = (p - 1) * (q - 1)
    d = pow(e, -1, phi)
    pub = rsa.RSAPublicNumbers(e, p * q)
    priv = rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q), pub
    )
    return priv.private_key()


def sign_image(src: Path, out: Path, key: Path, version: str, counter: int) -> None:
    sh(IMGTOOL, "sign", "-k", str(key), "-v", version, "-s", str(counter), "-H", "32",
       "--pad-header", "-S", "131072", str(src), str(out))  # fmt: skip


INV_HEADER = ("device_id,model,risk_class,sector,firmware_version,key_storage,apn,ip,ip_fixed,"
              "allowed_cidrs,vlan,groups,password_hash,open_ports,debug_ports_enabled,secure_boot,last_seen")  # fmt: skip


def build(root: Path, *, clean: bool) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    work = root.parent / (root.name + "-work")
    work.mkdir(exist_ok=True)
    for sub in (
        "certs",
        "cas",
        "crls",
        "broker",
        "network",
        "firmware/keys",
        "sbom",
        "vulns",
        "logs",
        "docs",
        "blocklists",
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ca = make_ca(work)
    shutil.copy(ca[1], root / "cas" / "fleet-ca.pem")
    n_dev = 12
    ids = [f"dev-{i:03d}" for i in range(1, n_dev + 1)]
    seen = (NOW - timedelta(hours=2)).isoformat(timespec="seconds")

    # --- inventory
    rows = [INV_HEADER]
    for i, did in enumerate(ids, 1):
        ip = f"10.20.0.{i + 10}"
        if clean:
            rows.append(
                f"{did},em200,high,energy,1.1.0,secure_element,private,{ip},true,10.20.0.0/16,20,meters,,8883,false,true,{seen}"
            )
        else:
            sector, storage, apn, fixed = "energy", "secure_element", "private", "true"
            pw, ports, debug = "", "8883", "false"
            if did == "dev-001":
                storage = "file"  # energy device, key in a file: no secure element
            if did in ("dev-002", "dev-003", "dev-004", "dev-005"):
                apn = "public"  # M3 with the anonymous, non-mTLS broker
            if did in ("dev-011", "dev-012"):
                pw = "$7$101$c2FsdHNhbHQ=$c2FtZWhhc2g="  # same hash on two devices (M1)
            if did == "dev-006":
                debug = "true"
            if did == "dev-007":
                ports = "23;8883"
            model = "em100" if did in ("dev-001", "dev-002") else "em200"
            rows.append(
                f"{did},{model},high,{sector},1.1.0,{storage},{apn},{ip},{fixed},10.20.0.0/16,20,meters,{pw},{ports},{debug},true,{seen}"
            )
    (root / "inventory.csv").write_text("\n".join(rows) + "\n")

    # --- certificates
    serial = 100
    for did in ids:
        serial += 1
        if clean:
            _, pem = device_cert(work, ca, did, serial)
            shutil.copy(pem, root / "certs" / f"{did}.pem")
            continue
        if did == "dev-003":  # same key as dev-002
            _, pem = device_cert(work, ca, did, serial, key=work / "dev-002.key")
        elif did == "dev-005":  # dev-004's certificate copied onto dev-005
            shutil.copy(work / "dev-004.pem", root / "certs" / "dev-005.pem")
            continue
        elif did == "dev-006":  # RSA 1024
            _, pem = device_cert(work, ca, did, serial, keytype="1024")
        elif did == "dev-007":  # ROCA-structured RSA 2048
            k = roca_key()
            pem = work / f"{did}.pem"
            pem.write_bytes(
                crypto_cert(ca, did, serial, k, NOW - timedelta(days=1), NOW + timedelta(days=200))
            )
        elif did == "dev-008":  # Debian weak key: its modulus is on the blocklist
            key, pem = device_cert(work, ca, did, serial, keytype="2048")
            n = x509.load_pem_x509_certificate(pem.read_bytes()).public_key().public_numbers().n  # type: ignore[union-attr]
            (root / "blocklists" / "blacklist.RSA-2048").write_text(
                "# openssl-blacklist format\n" + debian_fingerprint(n) + "\n0123456789abcdef0123\n"
            )
        elif did == "dev-009":  # expired
            k = serialization.load_pem_private_key(
                device_cert(work, ca, did, serial)[0].read_bytes(), None
            )
            pem = work / f"{did}.pem"
            pem.write_bytes(
                crypto_cert(ca, did, serial, k, NOW - timedelta(days=300), NOW - timedelta(days=2))
            )
        else:
            _, pem = device_cert(work, ca, did, serial)
        shutil.copy(pem, root / "certs" / f"{did}.pem")
    if clean:
        (root / "blocklists" / "blacklist.RSA-2048").write_text("0123456789abcdef0123\n")
    # dev-010 is revoked but still active in the inventory
    (root / "crls" / "fleet.crl").write_bytes(crl(ca, [] if clean else [110]))

    # --- broker
    if clean:
        conf = (
            "per_listener_settings false\nallow_anonymous false\nlistener 1883 127.0.0.1\n"
            "listener 8883\ncafile /etc/mosquitto/ca.pem\ncertfile /etc/mosquitto/server.pem\n"
            "keyfile /etc/mosquitto/server.key\nrequire_certificate true\n"
            "use_identity_as_username true\ntls_version tlsv1.2\n"
            "acl_file /etc/mosquitto/acl\nlog_dest file /var/log/mosquitto/mosquitto.log\n"
            "log_type error\nlog_type warning\nlog_type notice\nconnection_messages true\n"
        )
        acl = "user backend\ntopic readwrite devices/#\n\npattern readwrite devices/%u/#\n"
    else:
        conf = (
            "listener 1883 0.0.0.0\nallow_anonymous true\npassword_file /etc/mosquitto/passwd\n"
            "acl_file /etc/mosquitto/acl\nlog_dest file /var/log/mosquitto/mosquitto.log\n"
        )
        acl = "pattern readwrite #\n"
        (root / "broker" / "passwd").write_text("backend:$7$101$" + "c2FsdHNhbHQ=$c2FtZWhhc2g=\n")
    (root / "broker" / "mosquitto.conf").write_text(conf)
    (root / "broker" / "acl").write_text(acl)

    # --- network
    if clean:
        nft = (
            "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n"
            '\t\tct state established,related accept\n\t\tiif "lo" accept\n'
            "\t\tip saddr 10.20.0.0/16 tcp dport 8883 accept\n\t\tip saddr 10.99.0.0/24 tcp dport 22 accept\n\t}\n}\n"
        )
    else:
        nft = (
            "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n"
            "\t\ttcp dport 1883 accept\n\t\ttcp dport { 22, 23 } accept\n\t}\n}\n"
        )
    (root / "network" / "ruleset.nft").write_text(nft)
    (root / "network" / "vlans.csv").write_text(
        "vlan,name,purpose,cidr\n20,meters,smart meters (IoT only),10.20.0.0/24\n99,mgmt,management,10.99.0.0/24\n"
    )

    # --- firmware
    fw_key = work / "fw.pem"
    sh(IMGTOOL, "keygen", "-k", str(fw_key), "-t", "ecdsa-p256")
    sh(
        IMGTOOL,
        "getpub",
        "-k",
        str(fw_key),
        "-e",
        "pem",
        "-o",
        str(root / "firmware" / "keys" / "release.pub.pem"),
    )
    app = work / "app.bin"
    app.write_bytes(
        bytes(random.Random(1).getrandbits(8) for _ in range(6000)) + b"\0mqtt client v1\0"
    )
    sign_image(app, root / "firmware" / "em200-1.0.0.bin", fw_key, "1.0.0", 1 if clean else 5)
    sign_image(app, root / "firmware" / "em200-1.1.0.bin", fw_key, "1.1.0", 2 if clean else 3)
    if not clean:
        shutil.copy(app, root / "firmware" / "em100-1.0.0.bin")  # raw: unsigned
    zlib = "1.3.1" if clean else "1.2.11"
    for name in ["em200-1.0.0", "em200-1.1.0"] + ([] if clean else ["em100-1.0.0"]):
        (root / "sbom" / f"{name}.json").write_text(json.dumps({
            "bomFormat": "CycloneDX", "specVersion": "1.5",
            "metadata": {"component": {"name": name, "type": "firmware"}},
            "components": [{"type": "library", "name": "zlib", "version": zlib, "purl": f"pkg:generic/zlib@{zlib}"},
                           {"type": "library", "name": "mbedtls", "version": "3.6.2"}],
        }))  # fmt: skip
    (root / "vulns" / "zlib.json").write_text(json.dumps({
        "id": "CVE-2022-37434", "summary": "zlib inflate heap overflow",
        "affected": [{"package": {"ecosystem": "GIT", "name": "zlib"},
                      "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.2.12"}]}]}],
    }))  # fmt: skip

    # --- logs
    lines = []
    for i, did in enumerate(ids, 1):
        lines.append(
            f"1764100000: New client connected from 10.20.0.{i + 10}:5{i:04d} as {did} (p2, c1, k60, u'{did}')."
        )
    if not clean:
        lines.append(
            "1764100100: New client connected from 203.0.113.9:40000 as dev-004 (p2, c1, k60, u'dev-004')."
        )
        lines.append("1764100101: Client dev-004 already connected, closing old connection.")
    (root / "logs" / "mosquitto.log").write_text("\n".join(lines) + "\n")

    # --- policy and documents
    (root / "policy.toml").write_text(
        "[rotation]\ninterval_days = 365\n[certificates]\nmax_age_days = 365\n"
        '[controls]\nexpected = ["C1","C2","C3","C4","C5","C6","C7","C8","C9","C10"]\n'
        '[alerting]\nrules = ["auth failures > 10/min", "firmware hash change", "traffic volume x3"]\n'
        'destinations = ["pagerduty:fleet"]\n[support]\nperiod_years = 5\n'
        "[privacy]\npersonal_data = true\ntelemetry_retention_days = 90\n"
        '[firmware.minimum]\nem200 = "1.1.0"\n'
    )
    (root / "docs" / "README.md").write_text("Fleet documentation.\n")
    (root / "docs" / "security.txt").write_text("Contact: mailto:security@example.com\n")
    if clean:
        (root / "docs" / "incident-plan.md").write_text(
            f"# Incident response plan\nLast review: {TODAY}\nLast exercise: {TODAY}\n\n"
            "Contact: oncall@example.com\nEarly warning within 24 h, notification within 72 h.\n"
        )
    return root
