"""SIEM formats (each record carries seq, leaf hash, covering checkpoint) and archives
that verify on their own, with fleetwarden's verifier and the standalone one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from auditlog_helpers import ORIGIN, VERIFIERS, build

from fleetwarden.auditlog import siem
from fleetwarden.auditlog.archive import build_archive, verify_archive, write_archive
from fleetwarden.auditlog.errors import ArchiveError, CheckpointError
from fleetwarden.auditlog.store import AuditStore

STANDALONE = Path(siem.__file__).with_name("standalone_verify.py")


def _log(tmp_path: Path, n: int = 40, cps: tuple[int, ...] = (10, 25)) -> AuditStore:
    store = AuditStore.open(f"sqlite:///{tmp_path / 'a.db'}")
    build(store, n, cps)
    return store


def test_every_format_carries_proof_material(tmp_path: Path) -> None:
    store = _log(tmp_path)
    cps = {c.size: c.root.hex() for c in store.checkpoints()}
    lines = {f: list(siem.export(store, f)) for f in siem.FORMATS}
    assert all(len(v) == 40 for v in lines.values())
    e12 = store.entry(12)
    assert e12 is not None
    o = json.loads(lines["ocsf"][12])
    assert o["class_uid"] == 6003 and o["metadata"]["uid"] == e12.uid
    assert o["unmapped"]["fleetwarden_auditlog"] == {
        "seq": 12,
        "leaf_hash": e12.leaf_hash.hex(),
        "checkpoint": {"size": 25, "root_hash": cps[25]},
    }
    # canonical: sorted keys, no whitespace
    assert lines["ocsf"][12] == json.dumps(
        o, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    ecs = json.loads(lines["ecs"][12])
    assert ecs["event"]["sequence"] == 12 and ecs["event"]["hash"] == e12.leaf_hash.hex()
    assert ecs["labels"]["audit_checkpoint_size"] == "25" and ecs["@timestamp"].endswith("Z")
    cef = lines["cef"][12]
    assert cef.startswith("CEF:0|fleetwarden|fleetwarden|") and "|600301|API Activity|2|" in cef
    assert f"cs1={e12.leaf_hash.hex()}" in cef and "cn1=12" in cef and "cn2=25" in cef
    sl = lines["syslog"][12]
    assert sl.startswith("<110>1 ") and ' fleetwarden - audit [fwaudit@32473 seq="12" ' in sl
    assert f'cpRoot="{cps[25]}"' in sl


def test_cef_and_syslog_escaping() -> None:
    r = siem.ExportRecord(
        1,
        "ab",
        2,
        "cd",
        {
            "event": {
                "class_uid": 6003,
                "class_name": "A|B",
                "message": "x=y\\z\nw",
                "time": 0,
                "metadata": {"uid": "u"},
            }
        },
    )
    cef = siem.to_cef(r)
    assert "|A\\|B|" in cef and "msg=x\\=y\\\\z\\nw" in cef
    msg = siem.syslog_message("m", timestamp_ms=0, hostname="h", sd={"a@1": {"k": 'q"]\\'}})
    assert '[a@1 k="q\\"\\]\\\\"]' in msg


def test_only_checkpointed_entries_are_exported(tmp_path: Path) -> None:
    store = _log(tmp_path, 40, (10,))
    store.append(__import__("auditlog_helpers").events(5, "late"))
    assert len(list(siem.export(store, "ocsf"))) == 40
    with pytest.raises(siem.ExportError):
        list(siem.export(store, "xml"))
    with pytest.raises(siem.ExportError):
        siem.SyslogSender("ftp://x:1")


def test_syslog_sender_refuses_unreachable_and_oversize(tmp_path: Path) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(siem.ExportError, match="cannot connect"):
        siem.SyslogSender(f"tcp://127.0.0.1:{port}").connect()
    u = siem.SyslogSender(f"udp://127.0.0.1:{port}")
    with pytest.raises(siem.ExportError, match="exceeds"):
        u.send("x" * (siem.MAX_SYSLOG_BYTES + 1))
    u.close()


@pytest.mark.parametrize(("start", "end"), [(0, 40), (0, 1), (5, 23), (16, 32), (39, 40), (10, 25)])
def test_archive_verifies_alone(tmp_path: Path, start: int, end: int) -> None:
    store = _log(tmp_path)
    obj = build_archive(
        store, start, end, origin=ORIGIN, verifier_keys=[v.text() for v in VERIFIERS]
    )
    path = tmp_path / "arch.json"
    write_archive(path, obj)
    store.close()
    (tmp_path / "a.db").unlink()  # the database is gone: the file stands alone
    rep = verify_archive(path, VERIFIERS, origin=ORIGIN)
    assert (rep.start, rep.end) == (start, end) and rep.checkpoint_size >= end
    out = subprocess.run(
        [sys.executable, str(STANDALONE), "archive", VERIFIERS[0].text(), str(path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"entries {start}..{end - 1} verified" in out.stdout


def test_tampered_archives_are_refused(tmp_path: Path) -> None:
    store = _log(tmp_path)
    obj = build_archive(store, 5, 20, origin=ORIGIN, verifier_keys=[])
    import base64

    def mutate(fn) -> dict:  # type: ignore[no-untyped-def, type-arg]
        o = json.loads(json.dumps(obj))
        fn(o)
        return o  # type: ignore[no-any-return]

    def edit_leaf(o: dict) -> None:  # type: ignore[type-arg]
        leaf = base64.b64decode(o["entries"][3]["leaf"]).replace(b"device", b"DEVICE", 1)
        o["entries"][3]["leaf"] = base64.b64encode(leaf).decode()

    cases = [
        edit_leaf,
        lambda o: o["entries"].pop(4),
        lambda o: o["entries"].reverse(),
        lambda o: o["left"][0].__setitem__(2, "00" * 32),
        lambda o: o.__setitem__("end", 21),
        lambda o: o.__setitem__("format", "other"),
        lambda o: o.__setitem__("checkpoint", o["checkpoint"].replace("\n25\n", "\n26\n")),
        lambda o: o["right"].pop(),
    ]
    for i, fn in enumerate(cases):
        bad = mutate(fn)
        with pytest.raises((ArchiveError, CheckpointError)):
            verify_archive(bad, VERIFIERS)
        p = tmp_path / f"bad{i}.json"
        p.write_text(json.dumps(bad))
        out = subprocess.run(
            [sys.executable, str(STANDALONE), "archive", VERIFIERS[0].text(), str(p)],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 1, (i, out.stdout, out.stderr)


def test_standalone_verifier_imports_nothing_from_fleetwarden() -> None:
    src = STANDALONE.read_text()
    assert "fleetwarden." not in src.replace("fleetwarden log", "").replace("fleetwarden audit", "")
