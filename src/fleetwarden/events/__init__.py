"""Security events (OCSF-shaped) and the bus that carries them to every consumer."""

from fleetwarden.events.bus import EventBus, Handler, InProcessBus, create_bus
from fleetwarden.events.model import (
    Activity,
    AuthActivity,
    Event,
    EventClass,
    Severity,
    Status,
    api_activity,
    authentication,
    compliance_finding,
    detection_finding,
    device_config_change,
    device_config_change_record,
    ocsf_record,
)

__all__ = [
    "Activity",
    "AuthActivity",
    "Event",
    "EventBus",
    "EventClass",
    "Handler",
    "InProcessBus",
    "Severity",
    "Status",
    "api_activity",
    "authentication",
    "compliance_finding",
    "create_bus",
    "detection_finding",
    "device_config_change",
    "device_config_change_record",
    "ocsf_record",
]
