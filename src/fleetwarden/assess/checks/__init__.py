"""The check catalogue: small pure functions over :class:`~..evidence.Evidence`.

Each check lives in the module named after its control (``identity`` for C1,
``transport`` for C2, ...), is registered with :func:`check`, and has id == function
name. Framework references not given explicitly are taken from the crosswalk rows of the
check's controls and mistakes (``frameworks.CROSSWALK``), so the mapping stays data.

Invariant: the catalogue validates on import (unique ids, known references, known
evidence kinds); an invalid check is a bug and fails loudly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fleetwarden.assess import frameworks as fw
from fleetwarden.assess.errors import CatalogueError
from fleetwarden.assess.model import Check, CheckFn, CheckMeta, Effort, Severity

_REGISTRY: dict[str, Check] = {}
#: catalogue order: the ten controls in order, then the OWASP items beyond them
MODULE_ORDER = (
    "identity",
    "transport",
    "network",
    "rotation",
    "firmware",
    "logging",
    "segmentation",
    "alerting",
    "incident",
    "components",
    "hardening",
)
_FACTORS = {
    "critical": (7.0, 8.0),
    "high": (4.5, 6.5),
    "medium": (4.5, 4.5),
    "low": (3.0, 2.5),
    "info": (1.0, 1.0),
}


def _crosswalk(items: tuple[str, ...], col: int) -> tuple[str, ...]:
    out: list[str] = []
    for item in items:
        for ref in fw.CROSSWALK.get(item, ((), (), (), ()))[col]:
            if ref not in out:
                out.append(ref)
    return tuple(out)


def check(
    *,
    title: str,
    severity: str,
    rationale: str,
    remediation: str,
    effort: str,
    needs: tuple[str, ...],
    controls: tuple[str, ...] = (),
    mistakes: tuple[str, ...] = (),
    owasp: tuple[str, ...] | None = None,
    etsi: tuple[str, ...] | None = None,
    cra: tuple[str, ...] | None = None,
    nistir: tuple[str, ...] | None = None,
    extra_owasp: tuple[str, ...] = (),
    extra_etsi: tuple[str, ...] = (),
    extra_cra: tuple[str, ...] = (),
    **kw: Any,
) -> Callable[[CheckFn], CheckFn]:
    # default OWASP Risk Rating factors by severity; checks override where they know better
    lik, imp = _FACTORS[severity]
    kw.setdefault("likelihood", lik)
    kw.setdefault("impact", imp)

    def deco(fn: CheckFn) -> CheckFn:
        items = controls + mistakes
        meta = CheckMeta(
            id=fn.__name__,
            title=title,
            severity=Severity(severity),
            rationale=rationale,
            remediation=remediation,
            effort=Effort(effort),
            needs=needs,
            controls=controls,
            mistakes=mistakes,
            owasp=(owasp if owasp is not None else _crosswalk(items, 0)) + extra_owasp,
            etsi=(etsi if etsi is not None else _crosswalk(items, 1)) + extra_etsi,
            cra=(cra if cra is not None else _crosswalk(items, 3)) + extra_cra,
            nistir=nistir if nistir is not None else _crosswalk(items, 2),
            **kw,
        )
        try:
            meta.validate()
        except ValueError as exc:
            raise CatalogueError(str(exc)) from exc
        if meta.id in _REGISTRY:
            raise CatalogueError(f"duplicate check id {meta.id}")
        _REGISTRY[meta.id] = Check(meta, fn)
        return fn

    return deco


def catalogue() -> list[Check]:
    """Every check, in catalogue order (by control, then definition order)."""
    from fleetwarden.assess.checks import (  # noqa: F401 - importing registers the checks
        alerting,
        components,
        hardening,
        identity,
        incident,
        logging,
        network,
        rotation,
        segmentation,
        transport,
    )
    from fleetwarden.assess.checks import firmware as _firmware  # noqa: F401

    order = {name: i for i, name in enumerate(MODULE_ORDER)}
    return sorted(_REGISTRY.values(), key=lambda c: order[c.fn.__module__.rsplit(".", 1)[-1]])


def by_id() -> dict[str, Check]:
    return {c.meta.id: c for c in catalogue()}
