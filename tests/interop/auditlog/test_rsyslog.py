"""SIEM export over RFC 5424 syslog to a real rsyslogd, over TCP and over TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetwarden.auditlog import siem
from fleetwarden.auditlog.checkpoint import SyslogAnchor
from fleetwarden.auditlog.store import AuditStore

RSYSLOGD = shutil.which("rsyslogd") or (
    "/usr/sbin/rsyslogd" if Path("/usr/sbin/rsyslogd").exists() else None
)
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(RSYSLOGD is None, reason="rsyslog not installed"),
]


def _tls_files(d: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsyslog test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    c, k = d / "cert.pem", d / "key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return c, k


def _rsyslogd(d: Path, tls: bool):  # type: ignore[no-untyped-def]
    d.mkdir()
    out = d / "out.log"
    portfile = d / "port"
    drv = ""
    mod = 'module(load="imtcp")'
    if tls:
        cert, key = _tls_files(d)
        drv = (
            f'global(DefaultNetstreamDriver="ossl" DefaultNetstreamDriverCAFile="{cert}" '
            f'DefaultNetstreamDriverCertFile="{cert}" DefaultNetstreamDriverKeyFile="{key}")'
        )
        mod = 'module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")'
    conf = d / "rsyslog.conf"
    conf.write_text(f"""
global(workDirectory="{d}")
{drv}
{mod}
input(type="imtcp" port="0" listenPortFileName="{portfile}")
template(name="fields" type="string" string="%app-name%|%msgid%|%structured-data%|%msg%\\n")
action(type="omfile" file="{out}" template="fields")
""")
    proc = subprocess.Popen(
        [str(RSYSLOGD), "-n", "-f", str(conf), "-i", str(d / "pid")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (portfile.exists() and portfile.read_text().strip()):
        if proc.poll() is not None:
            pytest.fail(f"rsyslogd exited: {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.05)
    return proc, int(portfile.read_text().strip()), out, (d / "cert.pem" if tls else None)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_export_to_rsyslog(tmp_path: Path, tls: bool) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parents[2] / "unit" / "auditlog"))
    from auditlog_helpers import build

    store = AuditStore.open(f"sqlite:///{tmp_path / 'a.db'}")
    build(store, 30, (12,))
    proc, port, out, ca = _rsyslogd(tmp_path / "rs", tls)
    try:
        url = f"{'tls' if tls else 'tcp'}://127.0.0.1:{port}"
        with siem.SyslogSender(url, ca_file=ca) as s:
            for line in siem.export(store, "syslog"):
                s.send(line)
        cp = store.latest_checkpoint()
        assert cp is not None
        SyslogAnchor(url, ca).publish(cp)
        deadline = time.monotonic() + 15
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = out.read_text().splitlines() if out.exists() else []
            if len(lines) >= 31:
                break
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert len(lines) == 31, lines[-3:]
    e5 = store.entry(5)
    assert e5 is not None
    app, msgid, sd, msg = lines[5].split("|", 3)
    # rsyslog parsed our RFC 5424: app-name, msgid, structured data, OCSF JSON body
    assert (app, msgid) == ("fleetwarden", "audit")
    assert f'seq="5" leafHash="{e5.leaf_hash.hex()}" cpSize="12"' in sd
    assert '"fleetwarden_auditlog"' in msg and e5.uid in msg
    app, msgid, sd, msg = lines[30].split("|", 3)
    assert msgid == "checkpoint" and 'size="30"' in sd
    store.close()
