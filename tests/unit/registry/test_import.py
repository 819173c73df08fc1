"""Bulk import: all or nothing, precise line numbers, hostile files survive."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetwarden.errors import ImportRejectedError, ValidationError
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.importer import detect_format
from fleetwarden.registry.schemas import DeviceCreate

ME = Actor("test:import")


def _imp(reg: Registry, text: str | bytes, fmt: str = "csv", batch: int = 2, workers: int = 0):
    data = text.encode() if isinstance(text, str) else text
    return reg.import_devices(
        io.BytesIO(data), fmt=fmt, actor=ME, batch_size=batch, workers=workers
    )


def test_csv_full_columns_lists_bools_and_extras(registry: Registry) -> None:
    csv_text = (
        "\ufeffdevice_id,model,hardware_revision,risk_class,sector,firmware_version,key_storage,"
        "apn,ip,ip_fixed,allowed_cidrs,vlan,groups,site,owner\n"
        "m1,EM1,B,high,energy,1.0,secure_element,private,10.0.0.1,true,10.0.0.0/24;10.1.0.0/24,"
        "20,meters;north,plant-4,ops\n"
        "m2,,,,,,,,,false,,,,,\n"
        '"m3","EM ""2""",,low,,,,,,,,,meters,,\n'
    )
    res = _imp(registry, csv_text)
    assert (res.devices, res.groups_created, res.lines) == (3, 2, 4)
    m1 = registry.get_device("m1")
    assert m1.allowed_cidrs == ["10.0.0.0/24", "10.1.0.0/24"]
    assert m1.ip_fixed is True and m1.vlan == 20 and m1.apn and m1.apn.value == "private"
    assert m1.groups == ["meters", "north"]
    assert m1.attributes == {"site": "plant-4", "owner": "ops"}
    assert registry.get_device("m2").risk_class.value == "medium"
    assert registry.get_device("m3").model == 'EM "2"'
    ops = [p["api"]["operation"] for _, p in registry.pending_events()]
    assert ops == ["device.import"]  # one event for the import, not one per row


def test_jsonl(registry: Registry) -> None:
    lines = [
        {"device_id": "j1", "groups": ["a"], "ip_fixed": True, "vlan": 3, "color": "red"},
        {"device_id": "j2", "attributes": {"x": 1}},
    ]
    res = _imp(registry, "\n".join(json.dumps(x) for x in lines) + "\n\n", fmt="jsonl")
    assert res.devices == 2
    assert registry.get_device("j1").attributes == {"color": "red"}
    assert registry.get_device("j2").attributes == {"x": 1}


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("device_id,vlan\na,1\nb,5000\n", 3, "vlan"),
        ("device_id\na\na\n", 3, "duplicate"),
        ("device_id,ip_fixed\na,maybe\n", 2, "true or false"),
        ("device_id,model\na,x,extra\n", 2, "expected 2 cells"),
        ("model\nx\n", 1, "no device_id"),
        ("device_id,device_id\na,b\n", 1, "repeats"),
        ("device_id\nbad/id\n", 2, "device id"),
        ("device_id,allowed_cidrs\na,10.0.0.0/99\n", 2, "CIDR"),
    ],
)
def test_bad_csv_rejected_nothing_written(
    registry: Registry, text: str, line: int, reason: str
) -> None:
    with pytest.raises(ImportRejectedError) as info:
        _imp(registry, text)
    assert info.value.problems[0][0] == line
    assert reason in info.value.problems[0][1]
    assert registry.count_devices() == 0
    assert registry.list_groups() == []
    assert registry.pending_events() == []


def test_problem_after_many_batches_rolls_back_everything(registry: Registry) -> None:
    rows = "".join(f"d{i},g{i % 3}\n" for i in range(50))
    with pytest.raises(ImportRejectedError) as info:
        _imp(registry, "device_id,groups\n" + rows + "bad/id,\n", batch=7)
    assert info.value.problems == [(52, info.value.problems[0][1])]
    assert registry.count_devices() == 0
    assert registry.list_groups() == []


def test_existing_device_is_reported(registry: Registry) -> None:
    registry.add_device(DeviceCreate.model_validate({"device_id": "x"}), ME)
    with pytest.raises(ImportRejectedError, match="line 3: device 'x' already exists"):
        _imp(registry, "device_id\nnew\nx\n")
    assert registry.count_devices() == 1


def test_many_problems_listed_and_capped(registry: Registry) -> None:
    rows = "".join(f"bad/{i}\n" for i in range(500))
    with pytest.raises(ImportRejectedError) as info:
        _imp(registry, "device_id\n" + rows)
    assert len(info.value.problems) == 100
    assert info.value.truncated
    assert "more" in str(info.value)


@pytest.mark.parametrize(
    ("data", "fmt", "reason"),
    [
        (b"device_id\n\xff\xfe\n", "csv", "UTF-8"),
        (b"device_id\n" + b"a" * 70_000 + b"\n", "csv", "unreadable CSV"),
        (b'{"device_id": "a"}\n[1,2]\n', "jsonl", "JSON object"),
        (b'{"device_id": \n', "jsonl", "invalid JSON"),
        (b"x" * (300 * 1024), "jsonl", "longer than"),
    ],
)
def test_hostile_files(registry: Registry, data: bytes, fmt: str, reason: str) -> None:
    with pytest.raises(ImportRejectedError, match=reason):
        _imp(registry, data, fmt=fmt)
    assert registry.count_devices() == 0


def test_empty_and_unknown_format(registry: Registry) -> None:
    with pytest.raises(ValidationError, match="no devices"):
        _imp(registry, "")
    with pytest.raises(ValidationError, match="no devices"):
        _imp(registry, "device_id,model\n\n")
    with pytest.raises(ValidationError, match="format"):
        _imp(registry, "device_id\na\n", fmt="xml")
    with pytest.raises(ValidationError):
        detect_format("devices.xlsx")
    assert detect_format("a.CSV") == "csv" and detect_format("a.ndjson") == "jsonl"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=2000))
def test_fuzz_never_crashes_or_half_writes(registry: Registry, blob: bytes) -> None:
    for fmt in ("csv", "jsonl"):
        before = registry.count_devices()
        try:
            res = _imp(registry, blob, fmt=fmt, batch=3)
        except (ImportRejectedError, ValidationError):
            assert registry.count_devices() == before
        else:
            assert registry.count_devices() == before + res.devices
            with registry.engine.begin() as conn:
                from sqlalchemy import text

                conn.execute(text("DELETE FROM device_groups"))
                conn.execute(text("DELETE FROM devices"))


def test_worker_processes_give_the_same_result(registry: Registry) -> None:
    """Large inputs are validated in worker processes: same rows, same problems."""
    rows = "".join(f"w{i},g{i % 3},10.0.{i % 200}.0/24\n" for i in range(300))
    text = "device_id,groups,allowed_cidrs\n" + rows
    bad = text + "w5,,\nbad/id,,\n"
    with pytest.raises(ImportRejectedError) as info:
        _imp(registry, bad, batch=50, workers=2)
    assert [p[0] for p in info.value.problems] == [302, 303]
    assert "duplicate" in info.value.problems[0][1]
    assert registry.count_devices() == 0
    res = _imp(registry, text, batch=50, workers=2)
    assert (res.devices, res.groups_created, res.lines) == (300, 3, 301)
    assert registry.get_device("w299").allowed_cidrs == ["10.0.99.0/24"]


def test_awkward_values_survive_bulk_paths(registry: Registry) -> None:
    """Tabs, newlines, backslashes, quotes and non-ASCII go through COPY and executemany."""
    awkward = 'a\tb\\c\nd "e" ü \\N'
    line = json.dumps(
        {"device_id": "odd", "model": "M\\1", "note": awkward, "attributes": {"k": awkward}}
    )
    res = _imp(registry, line + "\n", fmt="jsonl")
    assert res.devices == 1
    d = registry.get_device("odd")
    assert d.model == "M\\1"
    assert d.attributes == {"k": awkward, "note": awkward}
    csv_text = 'device_id,model\nq1,"x\ty\\z ""w"""\n'
    _imp(registry, csv_text)
    assert registry.get_device("q1").model == 'x\ty\\z "w"'
