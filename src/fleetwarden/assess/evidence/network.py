"""Firewall rulesets (``nft list ruleset`` or ``iptables-save`` output) and the VLAN table.

Only the input side matters to the checks (who may reach the broker and the devices):
for nftables, chains hooked on ``input`` or ``forward``; for iptables, INPUT and
FORWARD. A rule is reduced to (source, destination ports, protocol, verdict); rules the
reader does not understand are kept out rather than guessed, which can only make a
FAIL less likely, never more.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import re

from fleetwarden.assess.errors import EvidenceError
from fleetwarden.assess.evidence.types import Firewall, FwRule, VlanRow

MAX_LINES = 200_000
_NFT_CHAIN = re.compile(r"^\s*chain\s+(\S+)\s*\{")
_NFT_HOOK = re.compile(r"type\s+filter\s+hook\s+(\w+).*?policy\s+(\w+)")
_NFT_SADDR = re.compile(r"ip6?\s+saddr\s+(\{[^}]*\}|\S+)")
_NFT_DPORT = re.compile(r"(tcp|udp)\s+dport\s+(\{[^}]*\}|\S+)")
_VERDICT = re.compile(r"\b(accept|drop|reject)\b")
# matchers that narrow a rule in ways this reader does not model (connection state,
# interface): such a rule is marked "cond" and never counted as open to everyone
_COND = re.compile(
    r"\bct\s+state\b|\biif(?:name)?\b|\boif(?:name)?\b|--ctstate|--state|\s-i\s|\s-o\s"
)


def _ports(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.strip("{} ").replace(",", " ").split():
        if "-" in part:
            lo, _, hi = part.partition("-")
            if lo.isdigit() and hi.isdigit() and int(hi) - int(lo) <= 65535:
                out.extend(range(int(lo), int(hi) + 1))
        elif ":" in part:
            lo, _, hi = part.partition(":")
            if lo.isdigit() and hi.isdigit():
                out.extend(range(int(lo), int(hi) + 1))
        elif part.isdigit():
            out.append(int(part))
        else:
            out.append({"mqtt": 1883, "secure-mqtt": 8883, "telnet": 23, "ssh": 22}.get(part, -1))
    return tuple(p for p in out if 0 < p < 65536)


def _source(text: str | None) -> str | None:
    if text is None:
        return None
    first = text.strip("{} ").split(",")[0].split()[0]
    try:
        net = ipaddress.ip_network(first, strict=False)
    except ValueError:
        return None
    return str(net)


def parse_nft(text: str, path: str) -> Firewall:
    fw = Firewall(path=path, kind="nftables", input_policy="accept")
    chain: str | None = None
    hooked = False
    saw_input = False
    for n, raw in enumerate(text.splitlines()[:MAX_LINES], 1):
        line = raw.strip()
        m = _NFT_CHAIN.match(raw)
        if m:
            chain, hooked = m.group(1), False
            continue
        h = _NFT_HOOK.search(line)
        if h and chain is not None:
            hooked = h.group(1) in {"input", "forward"}
            if h.group(1) == "input":
                saw_input = True
                fw.input_policy = h.group(2).lower()
            continue
        if chain is None or not hooked or line in {"", "}"}:
            continue
        v = _VERDICT.search(line)
        if not v:
            continue
        s = _NFT_SADDR.search(line)
        d = _NFT_DPORT.search(line)
        fw.rules.append(
            FwRule(
                chain=chain,
                source=_source(s.group(1)) if s else None,
                ports=_ports(d.group(2)) if d else None,
                proto="cond" if _COND.search(line) else (d.group(1) if d else None),
                action=v.group(1),
                line=n,
            )
        )
    if not saw_input:
        # no input hook at all: nothing filters inbound traffic
        fw.input_policy = "accept"
    return fw


def parse_iptables(text: str, path: str) -> Firewall:
    fw = Firewall(path=path, kind="iptables", input_policy="accept")
    in_filter = False
    for n, raw in enumerate(text.splitlines()[:MAX_LINES], 1):
        line = raw.strip()
        if line.startswith("*"):
            in_filter = line == "*filter"
            continue
        if not in_filter:
            continue
        if line.startswith(":INPUT"):
            fw.input_policy = line.split()[1].lower() if len(line.split()) > 1 else "accept"
            continue
        if not line.startswith("-A "):
            continue
        tok = line.split()
        chain = tok[1]
        if chain not in {"INPUT", "FORWARD"}:
            continue
        opts: dict[str, str] = {}
        i = 2
        while i < len(tok) - 1:
            if tok[i].startswith("-"):
                opts[tok[i]] = tok[i + 1]
                i += 2
            else:
                i += 1
        target = (opts.get("-j") or "").lower()
        if target not in {"accept", "drop", "reject"}:
            continue
        dport = opts.get("--dport") or opts.get("--dports")
        fw.rules.append(
            FwRule(
                chain=chain,
                source=_source(opts.get("-s") or opts.get("--source")),
                ports=_ports(dport) if dport else None,
                proto="cond" if _COND.search(" " + line) else opts.get("-p"),
                action=target,
                line=n,
            )
        )
    return fw


def parse_firewall(text: str, path: str) -> Firewall:
    if re.search(r"^\s*table\s+(inet|ip|ip6|bridge|netdev|arp)\s", text, re.M):
        return parse_nft(text, path)
    if re.search(r"^\*filter\s*$", text, re.M):
        return parse_iptables(text, path)
    raise EvidenceError("neither an nftables ruleset nor iptables-save output")


def parse_vlans(text: str, path: str) -> list[VlanRow]:
    try:
        return _parse_vlans(text)
    except csv.Error as exc:
        raise EvidenceError(f"unreadable CSV: {exc}") from exc


def _parse_vlans(text: str) -> list[VlanRow]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    need = {"vlan", "name", "purpose", "cidr"}
    if reader.fieldnames is None or not need <= {f.strip().lower() for f in reader.fieldnames}:
        raise EvidenceError("VLAN table needs the columns vlan, name, purpose, cidr")
    out: list[VlanRow] = []
    for row in reader:
        if len(out) >= 4094:
            raise EvidenceError("more than 4094 VLAN rows")
        r = {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k}
        try:
            vid = int(r["vlan"])
            if not 1 <= vid <= 4094:
                raise ValueError
            cidr = str(ipaddress.ip_network(r["cidr"], strict=False)) if r["cidr"] else ""
        except ValueError as exc:
            raise EvidenceError(f"line {reader.line_num}: bad vlan id or cidr") from exc
        out.append(VlanRow(vid, r["name"][:128], r["purpose"][:256], cidr))
    return out
