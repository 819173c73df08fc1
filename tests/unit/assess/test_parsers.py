"""Parser and check semantics on small hand-written inputs."""

from __future__ import annotations

import subprocess
from datetime import date, timedelta
from pathlib import Path

import pytest

from fleetwarden.assess.checks._util import roca_vulnerable
from fleetwarden.assess.engine import assess
from fleetwarden.assess.errors import EvidenceError
from fleetwarden.assess.evidence import collect, components, firmware, network
from fleetwarden.assess.evidence.broker import parse_acl, parse_conf
from fleetwarden.assess.evidence.types import Component


def test_iptables_save() -> None:
    text = (
        "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp --dport 23 -j ACCEPT\nCOMMIT\n"
        "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n-A INPUT -i lo -j ACCEPT\n"
        "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
        "-A INPUT -s 10.20.0.0/16 -p tcp -m tcp --dport 8883 -j ACCEPT\n"
        "-A INPUT -p tcp -m tcp --dport 1883 -j ACCEPT\nCOMMIT\n"
    )
    fw = network.parse_firewall(text, "x")
    assert fw.kind == "iptables" and fw.input_policy == "drop"
    assert [(r.source, r.ports, r.proto) for r in fw.rules] == [
        (None, None, "cond"),
        (None, None, "cond"),
        ("10.20.0.0/16", (8883,), "tcp"),
        (None, (1883,), "tcp"),
    ]


def test_nft_sets_and_ranges() -> None:
    text = "table ip f {\n chain in {\n  type filter hook input priority 0; policy drop;\n  ip saddr { 10.0.0.0/8, 192.168.0.0/16 } tcp dport { 8883, 9000-9002 } accept\n }\n}\n"
    fw = network.parse_firewall(text, "x")
    assert fw.rules[0].source == "10.0.0.0/8" and fw.rules[0].ports == (8883, 9000, 9001, 9002)
    with pytest.raises(EvidenceError):
        network.parse_firewall("hello", "x")


def test_mosquitto_semantics() -> None:
    b = parse_conf("allow_anonymous true\n", "c")
    assert b.listeners[0].address == "127.0.0.1"  # 2.x default: localhost only
    b = parse_conf(
        "per_listener_settings true\nlistener 1883\nallow_anonymous true\nlistener 8883\ncafile x\n",
        "c",
    )
    assert [lst.allow_anonymous for lst in b.listeners] == [True, None]
    with pytest.raises(EvidenceError):
        parse_conf("listener abc\n", "c")
    acl = parse_acl("topic read $SYS/#\nuser a\ntopic readwrite a/#\npattern write d/%u/up\n")
    assert [(e.user, e.kind, e.access) for e in acl] == [
        (None, "topic", "read"),
        ("a", "topic", "readwrite"),
        (None, "pattern", "write"),
    ]
    with pytest.raises(EvidenceError):
        parse_acl("grant all\n")


def test_osv_ranges() -> None:
    rec = components.parse_osv(
        '{"id":"X","affected":[{"package":{"name":"lib"},"versions":["0.9"],"ranges":[{"type":"SEMVER","events":[{"introduced":"1.0.0"},{"fixed":"1.4.2"}]},{"type":"SEMVER","events":[{"introduced":"2.0"},{"last_affected":"2.1"}]}]}]}',
        "v",
    )[0]
    hit = lambda v: components.affects(rec, Component("lib", v, None, None))  # noqa: E731
    assert hit("0.9") and hit("1.0.0") and hit("1.4.1") and hit("2.1")
    assert not hit("1.4.2") and not hit("1.10.0") and not hit("0.8") and not hit("2.2")
    assert not components.affects(rec, Component("other", "1.1", None, None))


def test_roca_fingerprint_rejects_ordinary_keys(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    for _ in range(3):
        n = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            .public_key()
            .public_numbers()
            .n
        )
        assert not roca_vulnerable(n)


def test_firmware_wrong_key_and_tampering(tmp_path: Path, bundles: dict[str, Path]) -> None:
    imgtool = str(Path(__import__("sys").executable).with_name("imgtool"))
    other = tmp_path / "other.pem"
    subprocess.run(
        [imgtool, "keygen", "-k", str(other), "-t", "ed25519"], check=True, capture_output=True
    )
    pub = tmp_path / "other.pub.pem"
    subprocess.run(
        [imgtool, "getpub", "-k", str(other), "-e", "pem", "-o", str(pub)],
        check=True,
        capture_output=True,
    )
    data = (bundles["clean"] / "firmware" / "em200-1.0.0.bin").read_bytes()
    img = firmware.parse_image(data, "a", {"other": firmware.read_key(pub)})
    assert img.signed and img.hash_ok and img.signature_valid is False
    tampered = bytearray(data)
    tampered[100] ^= 1
    good_key = firmware.read_key(bundles["clean"] / "firmware" / "keys" / "release.pub.pem")
    t = firmware.parse_image(bytes(tampered), "a", {"k": good_key})
    assert t.hash_ok is False and t.signature_valid is False
    assert firmware.parse_image(data, "a", {}).signature_valid is None


def test_firmware_content_scan() -> None:
    blob = b"\0boot\0-----BEGIN EC PRIVATE KEY-----\nMHc\0wifi_password=hunter22\0/usr/sbin/telnetd -l /bin/sh\0mqtt://admin:admin@broker\0"
    img = firmware.parse_image(blob, "fw/x-1.0.bin", {})
    assert img.private_keys and len(img.credentials) == 2 and "telnetd" in img.services
    assert "hunter22" not in " ".join(img.credentials)  # never the secret itself
    assert img.product == "x"


def _mini(root: Path, policy: str) -> Path:
    root.mkdir()
    (root / "inventory.csv").write_text("device_id,apn\nd1,public\nd2,public\nd3,private\n")
    (root / "policy.toml").write_text(policy)
    return root


def test_suppressions(tmp_path: Path) -> None:
    future = (date.today() + timedelta(days=30)).isoformat()
    past = (date.today() - timedelta(days=1)).isoformat()
    root = _mini(
        tmp_path / "b",
        f"""
[[suppress]]
check = "network_public_apn"
resource = "d1"
reason = "replacement ordered, ticket FW-12"
expires = {future}
[[suppress]]
check = "network_public_apn"
resource = "d2"
reason = "expired acceptance"
expires = {past}
[[suppress]]
check = "network_public_apn"
resource = "*"
expires = {future}
""",
    )
    a = assess(collect(root))
    f = next(f for f in a.findings if f.check_id == "network_public_apn")
    assert f.suppressed == ["d1"] and f.resources == ["d2"]
    assert any("expired" in n for n in a.suppression_notes)
    assert any("ignored" in n for n in a.suppression_notes)  # the one without a reason


def test_danger_needs_two_mistakes(tmp_path: Path) -> None:
    root = tmp_path / "b"
    root.mkdir()
    (root / "inventory.csv").write_text("device_id,password_hash\nd1,$7$x\nd2,$7$x\n")
    a = assess(collect(root))
    assert a.mistakes["M1"]["present"] and not a.danger
    (root / "policy.toml").write_text("[controls]\nexpected=[]\n")  # no [rotation]: M4
    a = assess(collect(root))
    assert a.mistakes["M4"]["present"] and a.danger


def test_collect_reads_iptables_and_vlan_files(tmp_path: Path) -> None:
    root = tmp_path / "b"
    (root / "network").mkdir(parents=True)
    (root / "network" / "rules.v4").write_text("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
    (root / "network" / "vlans.csv").write_text("vlan,name,purpose,cidr\n5000,x,y,10.0.0.0/8\n")
    ev = collect(root)
    assert ev.firewalls[0].kind == "iptables" and "vlans" not in ev.present
    assert ev.skipped[0].path == "network/vlans.csv"


def test_firmware_verdict_follows_the_control_plane_verifier(
    tmp_path: Path, bundles: dict[str, Path]
) -> None:
    """Trailing bytes after the TLVs: the minimal reader alone would accept the signature,
    the firmware control's verifier refuses the image, and the assessment follows it."""
    keys = {"k": firmware.read_key(bundles["clean"] / "firmware" / "keys" / "release.pub.pem")}
    data = (bundles["clean"] / "firmware" / "em200-1.0.0.bin").read_bytes() + b"\0" * 16
    assert firmware.parse_image(data, "a", keys).signature_valid is True
    p = tmp_path / "a.bin"
    p.write_bytes(data)
    img = firmware.read_image(p, tmp_path, keys)
    assert img.signature_valid is False and img.problem and "rejected" in img.problem
