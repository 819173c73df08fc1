"""The frameworks the checks map to, as data (facts from docs/reference/frameworks.md).

Invariant: every framework reference a check carries is a key of one of these tables;
``validate_refs`` enforces it when the catalogue loads, so a typo fails at import time
rather than in an auditor's report.
"""

from __future__ import annotations

CONTROLS: dict[str, str] = {
    "C1": "Unique X.509 identity per device, key in a secure element",
    "C2": "Client and server mutual TLS",
    "C3": "Private APN with VPN to the backend",
    "C4": "Fixed IP for firewalling",
    "C5": "OTA key rotation",
    "C6": "Signed firmware",
    "C7": "Audit logs",
    "C8": "VLAN / topic segmentation",
    "C9": "Anomaly alerting",
    "C10": "Documented incident plan",
}

MISTAKES: dict[str, str] = {
    "M1": "Shared credentials across devices",
    "M2": "Unsigned firmware allowing remote flashing",
    "M3": "Public APN without mutual TLS",
    "M4": "No key rotation plan",
}

OWASP: dict[str, str] = {
    "I1": "Weak, guessable or hardcoded passwords",
    "I2": "Insecure network services",
    "I3": "Insecure ecosystem interfaces",
    "I4": "Lack of secure update mechanism",
    "I5": "Use of insecure or outdated components",
    "I6": "Insufficient privacy protection",
    "I7": "Insecure data transfer and storage",
    "I8": "Lack of device management",
    "I9": "Insecure default settings",
    "I10": "Lack of physical hardening",
}

#: ETSI EN 303 645 provision ids cited by the catalogue (clauses and provisions).
ETSI: dict[str, str] = {
    "5.1": "No universal default passwords",
    "5.1-1": "No universal default passwords",
    "5.2": "Manage vulnerability reports",
    "5.2-1": "Vulnerability disclosure policy",
    "5.2-2": "Vulnerability reports acted on",
    "5.2-3": "Vulnerabilities monitored and remediated",
    "5.3": "Keep software updated",
    "5.3-7": "Update mechanism uses best-practice cryptography",
    "5.3-10": "Verify update authenticity",
    "5.3-13": "Publish support period",
    "5.4": "Securely store security parameters",
    "5.4-1": "Security parameters stored securely",
    "5.4-2": "Hard-coded identity resists tampering",
    "5.4-3": "No hard-coded critical security parameters",
    "5.4-4": "Per-device unique keys",
    "5.5": "Communicate securely",
    "5.5-1": "Best-practice cryptography to communicate",
    "5.5-5": "Authenticated device functionality changes",
    "5.5-7": "Critical parameters confidential in transit",
    "5.5-8": "Key management",
    "5.6": "Minimise attack surfaces",
    "5.6-1": "Unused interfaces disabled",
    "5.6-4": "Debug interfaces off",
    "5.7": "Software integrity",
    "5.7-1": "Secure boot",
    "5.7-2": "Unauthorised change alerted",
    "5.8": "Personal data secure",
    "5.9": "Resilience to outages",
    "5.10": "Examine telemetry",
    "5.10-1": "Telemetry examined for anomalies",
    "5.11": "Easy deletion of user data",
    "5.12": "Easy installation and maintenance",
    "5.13": "Validate input data",
    "6": "Data protection",
}

CRA: dict[str, str] = {
    "I(a)": "No known exploitable vulnerabilities",
    "I(b)": "Secure by default",
    "I(c)": "Fixable by security updates",
    "I(d)": "Access control",
    "I(e)": "Confidentiality",
    "I(f)": "Integrity",
    "I(g)": "Data minimisation",
    "I(h)": "Availability",
    "I(i)": "Minimal impact on other networks",
    "I(j)": "Limited attack surface",
    "I(k)": "Exploit mitigation",
    "I(l)": "Logging and monitoring",
    "I(m)": "Secure deletion and transfer of data",
    "II(1)": "SBOM",
    "II(2)": "Remediate without delay",
    "II(3)": "Regular testing",
    "II(4)": "Disclose fixed vulnerabilities",
    "II(5)": "Coordinated vulnerability disclosure policy",
    "II(6)": "Reporting contact",
    "II(7)": "Secure update distribution",
    "II(8)": "Free and prompt security updates",
    "Art. 13": "Support period of at least 5 years",
    "Art. 14": "Vulnerability and incident reporting",
}

NISTIR: dict[str, str] = {
    "DI": "Device identification",
    "DC": "Device configuration",
    "DP": "Data protection",
    "LA": "Logical access to interfaces",
    "SU": "Software update",
    "CSA": "Cybersecurity state awareness",
    "8259B": "Non-technical supporting capabilities (NISTIR 8259B)",
}

#: The crosswalk table of the reference, row by row: item -> (OWASP, ETSI, 8259A, CRA).
CROSSWALK: dict[str, tuple[tuple[str, ...], ...]] = {
    "C1": (("I1", "I7"), ("5.1-1", "5.4-1", "5.4-2", "5.4-4"), ("DI", "DP"), ("I(d)", "I(e)")),
    "C2": (("I3", "I7"), ("5.5-1", "5.5-5", "5.5-7"), ("LA", "DP"), ("I(d)", "I(e)", "I(f)")),
    "C3": (("I2", "I7"), ("5.5-1", "5.6-1"), ("LA",), ("I(e)", "I(i)", "I(j)")),
    "C4": (("I2",), ("5.6-1",), ("LA",), ("I(j)",)),
    "C5": (("I1", "I7", "I8"), ("5.4-4", "5.5-8"), ("DP", "DC"), ("I(c)", "I(e)", "II(2)")),
    "C6": (("I4", "I10"), ("5.3-7", "5.3-10", "5.7-1"), ("SU",), ("I(c)", "I(f)", "II(7)")),
    "C7": (("I8",), ("5.7-2", "5.10-1"), ("CSA",), ("I(d)", "I(f)", "I(l)")),
    "C8": (("I2",), ("5.6-1",), ("LA",), ("I(i)", "I(j)", "I(k)")),
    "C9": (("I8",), ("5.7-2", "5.10-1"), ("CSA",), ("I(d)", "I(h)", "I(l)")),
    "C10": (
        ("I8",),
        ("5.2-1", "5.2-2", "5.2-3"),
        ("8259B",),
        ("II(2)", "II(4)", "II(5)", "II(6)", "II(8)", "Art. 14"),
    ),
    "M1": (("I1",), ("5.1-1", "5.4-3", "5.4-4"), ("DI", "DP"), ("I(d)",)),
    "M2": (("I4",), ("5.3-10", "5.7-1"), ("SU",), ("I(c)", "I(f)", "II(7)")),
    "M3": (("I2", "I3", "I7"), ("5.5-1", "5.5-5", "5.6-1"), ("LA", "DP"), ("I(d)", "I(e)", "I(j)")),
    "M4": (("I7", "I8"), ("5.5-8",), ("DP",), ("I(e)", "II(2)")),
}

#: Sectors whose devices are expected to keep keys in a secure element (or TPM).
HIGH_RISK_SECTORS = frozenset({"health", "healthcare", "medical", "energy", "payments", "payment"})


def validate_refs(kind: str, refs: tuple[str, ...]) -> None:
    table = {
        "controls": CONTROLS,
        "mistakes": MISTAKES,
        "owasp": OWASP,
        "etsi": ETSI,
        "cra": CRA,
        "nistir": NISTIR,
    }[kind]
    for ref in refs:
        if ref not in table:
            raise ValueError(f"unknown {kind} reference {ref!r}")
