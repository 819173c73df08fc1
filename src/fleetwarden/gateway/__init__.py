"""Device gateway (controls C2, C3/C4 enforcement, C8 topics; mistakes M1, M3).

A managed Mosquitto 2.0 broker with a fleetwarden plugin (``plugin/fw_gateway.c``)
that takes the device identity from the client certificate, refuses revoked serials,
binds devices to their source networks, segments topics per device and group, kicks
revoked sessions live and counts per-device metrics. The Python side generates the
broker configuration and policy from the registry, supervises the broker, turns the
plugin's reports into OCSF events and windowed metric records, and reacts to
revocation events from the identity control.

Where to look: mutual TLS and broker config -> :mod:`.brokerconf`; live revocation ->
:meth:`Gateway.revoke` and ``on_control``/``revoke`` in the plugin; source networks and
topic ACL -> :mod:`.policy` and ``on_basic_auth``/``topic_allowed`` in the plugin;
metrics -> :mod:`.metrics`; device side -> :mod:`.agent`.
"""

from fleetwarden.gateway.config import GatewaySettings
from fleetwarden.gateway.service import Gateway

__all__ = ["Gateway", "GatewaySettings"]
