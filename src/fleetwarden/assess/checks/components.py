"""I5 insecure or outdated components: SBOMs against offline OSV records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath

from fleetwarden.assess.checks import check
from fleetwarden.assess.checks._util import status
from fleetwarden.assess.evidence import Evidence
from fleetwarden.assess.evidence.components import affects
from fleetwarden.assess.evidence.types import OsvRecord
from fleetwarden.assess.model import MANUAL, Result


@check(
    title="Firmware component with a known vulnerability",
    severity="high",
    rationale="A component listed in an OSV record is exploitable until updated.",
    remediation="Update the component and release new firmware; track fixes in the SBOM.",
    effort="M",
    needs=("sbom", "vulns"),
    controls=(),
    owasp=("I5",),
    etsi=("5.2-3", "5.3"),
    cra=("I(a)", "II(2)"),
    nistir=("SU",),
    task="update_devices",
    scope="file",
)
def components_known_vulnerable(ev: Evidence) -> Iterator[Result]:
    by_name: dict[str, list[OsvRecord]] = {}
    for rec in ev.vulns:
        for a in rec.affected:
            by_name.setdefault(a.name.lower(), []).append(rec)
    for sbom in ev.sboms:
        hits: list[str] = []
        for comp in sbom.components:
            for rec in by_name.get(comp.name.lower(), []):
                if affects(rec, comp) and f"{rec.id}" not in {h.split()[0] for h in hits}:
                    hits.append(f"{rec.id} {comp.name}@{comp.version}")
        yield status(not hits, sbom.path, "; ".join(hits[:10]))


@check(
    title="Firmware image without an SBOM",
    severity="low",
    rationale="Without an SBOM nobody can tell which images a new vulnerability affects "
    "(CRA Annex I Part II (1)).",
    remediation="Generate a CycloneDX SBOM for every release and keep it with the image.",
    effort="S",
    needs=("firmware",),
    controls=(),
    owasp=("I5",),
    etsi=("5.2-3",),
    cra=("II(1)",),
    nistir=("SU",),
    task="sbom",
    scope="file",
)
def components_sbom_missing(ev: Evidence) -> Iterator[Result]:
    names = {PurePosixPath(s.path).name.split(".")[0] for s in ev.sboms} | {
        s.subject for s in ev.sboms
    }
    for img in ev.firmware:
        stem = PurePosixPath(img.path).name.rsplit(".", 1)[0]
        found = stem in names or img.product in names or f"{img.product}-{stem}" in names
        if not found and not img.scanned and not ev.has("sbom"):
            yield MANUAL(img.path, "registry release; no sbom/ in the evidence")
            continue
        yield status(found, img.path, "no SBOM for this image")
