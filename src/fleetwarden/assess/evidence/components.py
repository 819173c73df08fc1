"""CycloneDX SBOMs (``sbom/*.json``) and OSV vulnerability records (``vulns/*.json``).

Matching is offline: a component is affected when an OSV record names its package
(by purl type/name or by name) and its version is listed or falls in a range
(introduced <= v < fixed, or <= last_affected). Versions compare as dotted numbers with a
string tail; ecosystems with other orderings may need a manual look, which is why the
finding shows the matched record and range.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fleetwarden.assess.errors import EvidenceError
from fleetwarden.assess.evidence.types import Component, OsvAffected, OsvRange, OsvRecord, Sbom

MAX_COMPONENTS = 100_000
_NUM = re.compile(r"\d+|[A-Za-z]+")


def _load(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise EvidenceError(f"invalid JSON: {str(exc)[:120]}") from exc


def _purl_parts(purl: str | None) -> tuple[str | None, str | None]:
    if not purl or not purl.startswith("pkg:"):
        return None, None
    body = purl[4:].split("?")[0].split("#")[0]
    typ, _, rest = body.partition("/")
    name = rest.rsplit("@", 1)[0].rsplit("/", 1)[-1]
    return typ.lower() or None, name or None


def parse_sbom(text: str, path: str) -> Sbom:
    doc = _load(text)
    if not isinstance(doc, dict) or doc.get("bomFormat") != "CycloneDX":
        raise EvidenceError("not a CycloneDX JSON document (bomFormat)")
    comps = doc.get("components") if doc.get("components") is not None else []
    if not isinstance(comps, list):
        raise EvidenceError("components is not a list")
    if len(comps) > MAX_COMPONENTS:
        raise EvidenceError(f"more than {MAX_COMPONENTS} components")
    out = []
    for c in comps:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            continue
        purl = c.get("purl") if isinstance(c.get("purl"), str) else None
        eco, _ = _purl_parts(purl)
        out.append(Component(c["name"][:256], str(c.get("version") or "")[:64], purl, eco))
    meta = doc.get("metadata")
    subject = path
    if isinstance(meta, dict) and isinstance(meta.get("component"), dict):
        subject = str(meta["component"].get("name") or path)[:256]
    return Sbom(path=path, subject=subject, components=out)


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def parse_osv(text: str, path: str) -> list[OsvRecord]:
    doc = _load(text)
    items = doc if isinstance(doc, list) else [doc]
    out = []
    for rec in items[:100_000]:
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
            raise EvidenceError("OSV record without an id")
        affected = []
        for a in _list(rec.get("affected")):
            if not isinstance(a, dict) or not isinstance(a.get("package"), dict):
                continue
            pkg = a["package"]
            eco, name = _purl_parts(pkg.get("purl") if isinstance(pkg.get("purl"), str) else None)
            name = pkg["name"] if isinstance(pkg.get("name"), str) and pkg["name"] else name or ""
            if not name:
                continue
            ranges = []
            for r in _list(a.get("ranges")):
                if not isinstance(r, dict):
                    continue
                intro = fixed = last = None
                for e in _list(r.get("events")):
                    if isinstance(e, dict):
                        intro = str(e["introduced"]) if "introduced" in e else intro
                        fixed = str(e["fixed"]) if "fixed" in e else fixed
                        last = str(e["last_affected"]) if "last_affected" in e else last
                ranges.append(OsvRange(intro, fixed, last))
            versions = frozenset(v for v in _list(a.get("versions")) if isinstance(v, str))
            affected.append(
                OsvAffected(
                    str(pkg.get("ecosystem") or eco or "")[:64] or None,
                    name[:256],
                    versions,
                    ranges,
                )
            )
        sev = None
        ds = rec.get("database_specific")
        if isinstance(ds, dict) and isinstance(ds.get("severity"), str):
            sev = ds["severity"].lower()
        out.append(
            OsvRecord(path, rec["id"][:64], str(rec.get("summary") or "")[:300], affected, sev)
        )
    return out


def vkey(v: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _NUM.findall(v))


def _lt(a: str, b: str) -> bool:
    try:
        return vkey(a) < vkey(b)
    except TypeError:
        return a < b


def affects(rec: OsvRecord, comp: Component) -> bool:
    for a in rec.affected:
        if a.name.lower() != comp.name.lower():
            continue
        if not comp.version:
            continue
        if comp.version in a.versions:
            return True
        for r in a.ranges:
            intro = r.introduced or "0"
            if intro != "0" and _lt(comp.version, intro):
                continue
            if r.fixed is not None and not _lt(comp.version, r.fixed):
                continue
            if r.last_affected is not None and _lt(r.last_affected, comp.version):
                continue
            if r.fixed is None and r.last_affected is None and intro == "0":
                continue  # an open range with no bound says nothing offline
            return True
    return False
