"""Signed firmware and OTA updates: control C6 (signed firmware, mistake M2) and C5
(signing key rotation).

Submodules: ``image`` (MCUboot format), ``keys`` (signing keys), ``service`` (publish),
``repository`` (TUF), ``rollout`` (staged rollouts), ``ddi`` (hawkBit device API),
``agent`` (device side), ``component`` (part of ``fleetwarden up``). They are imported
on use: this package is loaded by the settings and must stay light.
"""

__all__ = [
    "agent",
    "component",
    "ddi",
    "image",
    "keys",
    "repository",
    "rollout",
    "service",
]
