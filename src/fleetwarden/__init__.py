"""fleetwarden: IoT fleet security.

Runs the ten minimum controls for a device fleet (unique identity, mutual TLS, private
networking, fixed addressing, key rotation, signed firmware, audit logs, segmentation,
anomaly alerting, incident plan) and audits any fleet against them.
"""

__version__ = "0.1.0"
