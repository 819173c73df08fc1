"""Mitigations: what a rule may do to a device, automatically or on approval.

A :class:`Mitigation` is a tiny interface (``name``, ``apply(device_id, alert_id,
actor)``). Implemented now:

- :class:`QuarantineGroup`: moves the device into the quarantine group (created if
  missing) through the registry, so the change carries its own audit event. Topic
  restrictions for that group are enforced by the gateway's ACL generation (issue
  [gateway]); until the gateway lands, membership is recorded but not enforced at the
  broker.

Declared but NOT wired (they raise :class:`MitigationNotWiredError`, they never pretend):

- :class:`RevokeCertificate`: needs the identity control (CA, CRL) from issue [identity];
- :class:`DropSession`: needs the managed broker's live-session control from issue
  [gateway].

Invariant: a mitigation runs only for alerts from rules that declare it; ``approval``
mode waits for ``fleetwarden alerts approve`` (or the API), ``auto`` runs at once.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

from fleetwarden.detect.errors import MitigationNotWiredError
from fleetwarden.errors import ConflictError, NotFoundError
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.schemas import GroupCreate


class Mitigation(Protocol):
    name: str

    def apply(self, device_id: str, alert_id: str, actor: Actor) -> str:
        """Act on the device; return a one-line description of what was done."""
        ...


class QuarantineGroup:
    name = "quarantine"

    def __init__(self, registry: Registry, group: str = "quarantine") -> None:
        self.registry = registry
        self.group = group

    def apply(self, device_id: str, alert_id: str, actor: Actor) -> str:
        try:
            self.registry.get_group(self.group)
        except NotFoundError:
            with contextlib.suppress(ConflictError):  # created concurrently
                self.registry.create_group(
                    GroupCreate(
                        name=self.group,
                        description="devices isolated by detection (restricted topics)",
                    ),
                    actor,
                )
        self.registry.set_membership(self.group, device_id, True, actor)
        return f"device {device_id} moved to group {self.group} (alert {alert_id})"


class RevokeCertificate:
    name = "revoke_certificate"

    def apply(self, device_id: str, alert_id: str, actor: Actor) -> str:
        raise MitigationNotWiredError(
            "revoke_certificate is not wired yet: it needs the identity control (fleet CA and "
            "CRL, issue [identity]); revoke the device certificate by hand"
        )


class DropSession:
    name = "drop_session"

    def apply(self, device_id: str, alert_id: str, actor: Actor) -> str:
        raise MitigationNotWiredError(
            "drop_session is not wired yet: it needs the managed broker's session control "
            "(issue [gateway])"
        )


def mitigations(registry: Registry, quarantine_group: str = "quarantine") -> dict[str, Mitigation]:
    return {
        "quarantine": QuarantineGroup(registry, quarantine_group),
        "revoke_certificate": RevokeCertificate(),
        "drop_session": DropSession(),
    }
