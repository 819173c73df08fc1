"""The catalogue's metadata: enough checks, valid references, full coverage."""

from __future__ import annotations

import inspect

from fleetwarden.assess import frameworks as fw
from fleetwarden.assess.checks import by_id, catalogue


def test_size_ids_and_modules() -> None:
    checks = catalogue()
    assert len(checks) >= 60
    for c in checks:
        assert c.meta.id == c.fn.__name__
        module = inspect.getmodule(c.fn)
        assert module is not None and module.__name__.startswith("fleetwarden.assess.checks.")
    assert len(by_id()) == len(checks)


def test_every_control_mistake_and_owasp_item_is_covered() -> None:
    checks = catalogue()
    for kind, table in (("controls", fw.CONTROLS), ("mistakes", fw.MISTAKES), ("owasp", fw.OWASP)):
        covered = {x for c in checks for x in getattr(c.meta, kind)}
        assert covered == set(table), kind


def test_references_come_from_the_framework_tables() -> None:
    for c in catalogue():
        m = c.meta
        assert (
            set(m.etsi) <= set(fw.ETSI)
            and set(m.cra) <= set(fw.CRA)
            and set(m.nistir) <= set(fw.NISTIR)
        )
        assert m.etsi and m.cra and m.nistir, m.id


def test_crosswalk_defaults_follow_the_reference() -> None:
    m = by_id()["firmware_image_unsigned"].meta
    # C6 row and M2 row of the crosswalk
    assert {"I4", "I10"} <= set(m.owasp)
    assert {"5.3-7", "5.3-10", "5.7-1"} <= set(m.etsi)
    assert {"I(c)", "I(f)", "II(7)"} <= set(m.cra) and m.nistir == ("SU",)


def test_device_defender_parity() -> None:
    dd = " ".join(c.meta.device_defender for c in catalogue())
    for name in (
        "DEVICE_CERTIFICATE_SHARED_CHECK",
        "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK",
        "CA_CERTIFICATE_KEY_QUALITY_CHECK",
        "REVOKED_CA_CERTIFICATE_STILL_ACTIVE_CHECK",
        "INTERMEDIATE_CA_REVOKED_FOR_ACTIVE_DEVICE_CERTIFICATES_CHECK",
        "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK",
        "DEVICE_CERTIFICATE_EXPIRING_CHECK",
        "CA_CERTIFICATE_EXPIRING_CHECK",
        "DEVICE_CERTIFICATE_AGE_CHECK",
        "IOT_POLICY_OVERLY_PERMISSIVE_CHECK",
        "IOT_POLICY_POTENTIAL_MIS_CONFIGURATION_CHECK",
        "CONFLICTING_CLIENT_IDS_CHECK",
        "LOGGING_DISABLED_CHECK",
    ):
        assert name in dd, name


def test_docs_list_every_check() -> None:
    from pathlib import Path

    from fleetwarden.assess.catalogue_doc import table

    doc = (Path(__file__).parents[3] / "docs" / "assess.md").read_text()
    assert table() in doc, "regenerate: python -m fleetwarden.assess.catalogue_doc"
