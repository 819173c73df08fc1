"""Control C7, audit logs: a tamper-evident record of every security event.

An append-only RFC 9162 Merkle tree (``merkle``, ``store``) fed only by the event bus
(``component``) through a group-commit writer (``writer``), with C2SP signed-note
checkpoints (``note``, ``keys``, ``checkpoint``) published to external anchors, full
verification that names the first damaged index (``verify``), SIEM export (``siem``),
self-verifying archives (``archive``) and a standalone verifier for auditors
(``standalone_verify``). See docs/auditlog.md.

This package's ``__init__`` stays import-free: ``fleetwarden.settings`` imports
``auditlog.config`` at start-up.
"""
