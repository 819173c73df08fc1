"""The six outputs: written together or not at all, shapes as documented, --compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetwarden.assess.engine import assess
from fleetwarden.assess.errors import ReportError
from fleetwarden.assess.evidence import collect
from fleetwarden.assess.report import OUTPUTS, write_reports
from fleetwarden.assess.report import html as html_mod
from fleetwarden.assess.report.compare import compare, load_previous
from fleetwarden.cli import main
from fleetwarden.events import Event


@pytest.fixture(scope="module")
def dirty_out(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "report"
    write_reports(assess(collect(bundles["dirty"])), out)
    return out


def test_all_six_outputs(dirty_out: Path) -> None:
    assert sorted(p.name for p in dirty_out.iterdir()) == sorted(OUTPUTS)
    assert (dirty_out / "report.pdf").read_bytes().startswith(b"%PDF-")
    md = (dirty_out / "report.md").read_text()
    assert md.splitlines()[0].startswith("**This fleet is in serious danger")
    html = (dirty_out / "report.html").read_text()
    assert "This fleet is in serious danger" in html.split("<h1>")[0]
    assert (
        "<script" not in html
        and "http://" not in html
        and "https://" not in html.split("</style>")[0]
    )
    for section in (
        "Executive summary",
        "Control scorecard",
        "Risk matrix",
        "Prioritized findings",
        "90-day remediation plan",
        "Per-device appendix",
    ):
        assert section in html


def test_findings_json_schema(dirty_out: Path) -> None:
    doc = json.loads((dirty_out / "findings.json").read_text())
    assert doc["danger"] is True
    assert list(doc["controls"]) == [f"C{i}" for i in range(1, 11)]
    assert all(
        set(v) >= {"status", "findings"} and v["status"] in {"pass", "fail", "partial", "manual"}
        for v in doc["controls"].values()
    )
    assert list(doc["mistakes"]) == ["M1", "M2", "M3", "M4"]
    assert all(
        isinstance(v["present"], bool) and isinstance(v["devices"], list)
        for v in doc["mistakes"].values()
    )
    assert list(doc["owasp"]) == [f"I{i}" for i in range(1, 11)]
    keys = {
        "check_id",
        "title",
        "status",
        "severity",
        "risk_score",
        "controls",
        "mistakes",
        "owasp",
        "etsi",
        "cra",
        "resources",
        "remediation",
        "plan_task",
    }
    for f in doc["findings"]:
        assert keys <= set(f)
        assert f["status"] in {"PASS", "FAIL", "MANUAL"}
        if f["status"] == "FAIL":
            assert f["plan_task"] in {t["id"] for t in doc["plan"]}
    for t in doc["plan"]:
        assert {"id", "title", "phase", "start_day", "end_day", "depends_on", "findings"} <= set(t)
        assert 0 <= t["start_day"] <= t["end_day"] <= 90


def test_sarif_shape(dirty_out: Path) -> None:
    doc = json.loads((dirty_out / "findings.sarif").read_text())
    assert doc["version"] == "2.1.0"
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    assert len(ids) == len(set(ids)) >= 60
    for res in run["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["level"] in {"error", "warning", "note", "none"}
        assert res["locations"]
    uris = {
        loc["physicalLocation"]["artifactLocation"]["uri"]
        for r in run["results"]
        for loc in r["locations"]
        if "physicalLocation" in loc
    }
    assert "firmware/em100-1.0.0.bin" in uris
    devices = {
        ll["name"]
        for r in run["results"]
        for loc in r["locations"]
        for ll in loc.get("logicalLocations", [])
        if ll["kind"] == "device"
    }
    assert "dev-007" in devices


def test_ocsf_lines_are_compliance_findings(dirty_out: Path) -> None:
    lines = (dirty_out / "findings.ocsf.jsonl").read_text().splitlines()
    assert len(lines) >= 60
    for line in lines:
        obj = json.loads(line)
        assert obj["class_uid"] == 2003 and obj["type_uid"] == 200301
        assert obj["compliance"]["status"] in {"Pass", "Fail", "Manual"}
        ev = Event.from_ocsf(obj)
        assert int(ev.class_uid) == 2003
    fails = [json.loads(x) for x in lines if json.loads(x)["compliance"]["status"] == "Fail"]
    roca = next(o for o in fails if o["finding_info"]["uid"] == "identity_key_roca")
    assert roca["device"]["uid"] == "dev-007"
    assert "ETSI EN 303 645 5.4-4" in roca["compliance"]["standards"]


def test_failed_render_writes_nothing(
    bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = assess(collect(bundles["clean"]))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def boom(text: str, target: Path) -> None:
        raise ReportError("pdf renderer exploded")

    monkeypatch.setattr("fleetwarden.assess.report.render_pdf", boom)
    with pytest.raises(ReportError):
        write_reports(a, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # temp dir removed

    monkeypatch.setattr(html_mod, "render", lambda a: (_ for _ in ()).throw(ValueError("bad")))
    with pytest.raises(ReportError):
        write_reports(a, out, pdf=False)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_compare_improved_and_regressed(bundles: dict[str, Path], dirty_out: Path) -> None:
    prev = load_previous(dirty_out / "findings.json")
    c = compare(assess(collect(bundles["clean"])), prev)
    improved = {x["check_id"] for x in c["improved"]}
    assert {
        "identity_key_roca",
        "firmware_image_unsigned",
        "transport_anonymous_access",
    } <= improved
    assert c["regressed"] == [] and c["danger_before"] is True and c["danger_now"] is False
    # the other way round everything planted is a regression
    clean_prev = json.loads(json.dumps(prev))
    for f in clean_prev["findings"]:
        f["status"], f["resources"] = "PASS", []
    c2 = compare(assess(collect(bundles["dirty"])), clean_prev)
    assert "identity_key_roca" in {x["check_id"] for x in c2["regressed"]}


def test_cli_end_to_end(
    bundles: dict[str, Path], dirty_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli-out"
    code = 0
    try:
        main(["assess", str(bundles["clean"]), "--out", str(out), "--no-pdf", "--json",
              "--compare", str(dirty_out / "findings.json")])  # fmt: skip
    except SystemExit as exc:
        code = int(exc.code or 0)
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["danger"] is False and summary["failing"] == 0
    doc = json.loads((out / "findings.json").read_text())
    assert doc["comparison"]["improved"]
    assert not (out / "report.pdf").exists()


def test_cli_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (
        ["assess", "--out", str(tmp_path / "o")],
        ["assess", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
    ):
        code = 0
        try:
            main(args)
        except SystemExit as exc:
            code = int(exc.code or 0)
        _, err = capsys.readouterr()
        assert code != 0 and "Traceback" not in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    (tmp_path / "b").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["assess", str(tmp_path / "b"), "--out", str(tmp_path / "o"), "--compare", str(bad)])
    assert exc.value.code != 0
    assert "cannot read previous findings" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_appendix_is_paginated_and_capped(
    bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "big"
    root.mkdir()
    rows = ["device_id,apn,vlan,key_storage"] + [
        f"d{i:05d},{'public' if i % 2 else 'private'},7,tpm" for i in range(1200)
    ]
    (root / "inventory.csv").write_text("\n".join(rows) + "\n")
    a = assess(collect(root))
    text = html_mod.render(a)
    assert text.count("<h3>Devices, page") == html_mod.MAX_APPENDIX_DEVICES // html_mod.PAGE_SIZE
    assert "d00001" in text  # failing devices first
    assert "1200 devices; 600 with failing checks" in text


def test_html_escapes_evidence(tmp_path: Path) -> None:
    root = tmp_path / "x"
    root.mkdir()
    (root / "inventory.csv").write_text(
        "device_id,model,apn\nevil-1,<script>alert(1)</script>,public\n"
    )
    text = html_mod.render(assess(collect(root)))
    assert "<script>" not in text and "&lt;script&gt;" in text
