"""The gateway device agent with a PKCS#11 token key, in its own process.

SoftHSM2 reads its configuration once per process and the OpenSSL pkcs11 engine binds
one module per process, so the token-key agent runs here, away from the pytest
process (where other tests already initialised SoftHSM2). Driven by stdin lines
(``publish``, ``status``, ``stop``); answers one JSON line each. Usage:
``python token_agent.py '<json config>'`` with the PIN in FLEETWARDEN_PKCS11_PIN.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fleetwarden.errors import Error
from fleetwarden.gateway.agent import AgentConfig, TelemetryAgent
from fleetwarden.identity.tlskey import TokenKey


def main() -> int:
    c = json.loads(sys.argv[1])
    pin = os.environ.get("FLEETWARDEN_PKCS11_PIN")
    try:
        agent = TelemetryAgent(
            AgentConfig(
                device_id=c["device_id"],
                host="localhost",
                port=c["port"],
                ca_file=Path(c["ca_file"]),
                cert_file=Path(c["cert_file"]),
                token_key=TokenKey(
                    module=Path(c["module"]),
                    token_label=c["token_label"],
                    key_label=c["key_label"],
                    pin=pin.encode() if pin else None,
                    engine=c.get("engine", "pkcs11"),
                ),
                backoff_base_s=0.2,
                backoff_cap_s=1.0,
            )
        )
    except Error as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    agent.start()
    print(json.dumps({"started": True}), flush=True)
    n = 0
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "publish":
            n += 1
            print(json.dumps({"published": agent.publish({"n": n})}), flush=True)
        elif cmd == "status":
            st = {"connected": agent.connected.is_set(), "connects": agent.connects}
            print(json.dumps(st), flush=True)
        elif cmd == "stop":
            break
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
