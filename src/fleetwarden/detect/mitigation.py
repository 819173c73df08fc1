"""Mitigations: what a rule may do to a device, automatically or on approval.

A :class:`Mitigation` is a tiny interface (``name``, ``apply(device_id, alert_id,
actor)``). All three are wired:

- :class:`QuarantineGroup`: moves the device into the quarantine group (created if
  missing) through the registry, so the change carries its own audit event; the
  gateway's policy confines quarantined devices to ``quarantine/<id>/...`` and drops
  their live session when the membership changes.
- :class:`RevokeCertificate`: :meth:`IdentityService.revoke` (reason
  ``key_compromise``) on the device's unexpired certificates; the identity control
  records the 5019 revocation event in the outbox, from which the CRL is regenerated and
  the gateway refuses the serial and kicks the session carrying it.
- :class:`DropSession`: :meth:`Gateway.drop_session` (``kick`` on the broker's control
  channel): the live session is dropped, nothing is revoked, the device may reconnect
  under the current policy (pair it with quarantine to keep it confined).

The identity service and the gateway are found through the running service's app state
(``app.state.identity``, ``app.state.gateway``) when the mitigation runs, not when it is
built, so start order does not matter. Invariant: when the service a mitigation needs is
absent (no fleet CA, gateway disabled or not started, a CLI process without the broker)
it raises :class:`MitigationNotWiredError` naming why: it never reports an action it did
not take. A mitigation runs only for alerts from rules that declare it; ``approval`` mode
waits for ``fleetwarden alerts approve`` (or the API), ``auto`` runs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from fleetwarden.detect.errors import DetectError, MitigationNotWiredError
from fleetwarden.errors import ConflictError, NotFoundError
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.schemas import GroupCreate

if TYPE_CHECKING:
    from fleetwarden.gateway import Gateway
    from fleetwarden.identity.service import IdentityService

#: how long a mitigation waits for the broker to accept the kick command
DROP_TIMEOUT_S = 10.0


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
    """Revoke the device's certificate(s) with the fleet CA (identity control, C1)."""

    name = "revoke_certificate"

    def __init__(
        self,
        identity: Callable[[], IdentityService | None] = lambda: None,
        reason: str = "key_compromise",
    ) -> None:
        self._identity = identity
        self.reason = reason

    def apply(self, device_id: str, alert_id: str, actor: Actor) -> str:
        svc = self._identity()
        if svc is None:
            raise MitigationNotWiredError(
                "revoke_certificate could not act: no fleet CA (run `fleetwarden ca init`); "
                f"revoke by hand: fleetwarden device revoke {device_id} --reason key_compromise"
            )
        # The revocation event names who acted and for which alert.
        by = Actor(name=f"{actor.name} (alert {alert_id})", src_ip=actor.src_ip, via=actor.via)
        serials = svc.revoke(device_id, self.reason, by)
        # The running identity control also regenerates on the event; doing it here keeps
        # the published CRL right when the mitigation runs in another process (CLI).
        svc.regenerate_crl()
        return (
            f"certificate(s) {', '.join(serials)} of {device_id} revoked ({self.reason}, "
            f"alert {alert_id}); the gateway refuses them and drops the session"
        )


class DropSession:
    """Drop the device's live broker session (gateway control, C2/C8)."""

    name = "drop_session"

    def __init__(
        self,
        gateway: Callable[[], Gateway | None] = lambda: None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._gateway = gateway
        self._loop = loop

    def apply(self, device_id: str, alert_id: str, actor: Actor) -> str:
        gw = self._gateway()
        loop = self._loop
        if gw is None or loop is None or loop.is_closed():
            raise MitigationNotWiredError(
                "drop_session could not act: the managed broker is not running in this "
                "process (gateway disabled or not started, or a CLI process); approve "
                "through the API of `fleetwarden up`"
            )
        with contextlib.suppress(RuntimeError):  # RuntimeError: no loop in this thread
            if asyncio.get_running_loop() is loop:
                # Blocking here would deadlock the loop the gateway needs: callers run
                # mitigations in a worker thread (run_in_threadpool).
                raise DetectError("drop_session must run in a worker thread, not on the loop")
        fut = asyncio.run_coroutine_threadsafe(gw.drop_session(device_id), loop)
        fut.result(timeout=DROP_TIMEOUT_S)
        return f"live session of {device_id} dropped at the broker (alert {alert_id})"


def mitigations(
    registry: Registry,
    quarantine_group: str = "quarantine",
    *,
    state: Any = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> dict[str, Mitigation]:
    """The available mitigations; ``state`` is the API app's state (where the identity
    service and the gateway register), ``loop`` the event loop the gateway runs on."""
    return {
        "quarantine": QuarantineGroup(registry, quarantine_group),
        "revoke_certificate": RevokeCertificate(lambda: getattr(state, "identity", None)),
        "drop_session": DropSession(lambda: getattr(state, "gateway", None), loop),
    }
