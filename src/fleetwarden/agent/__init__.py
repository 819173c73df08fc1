"""The device agent (controls C1 and C5 on the device side).

:class:`Agent` enrols over EST with a one-time token or a factory certificate, renews at
about 2/3 of the certificate's lifetime (with jitter, so a fleet enrolled together does
not renew together) using a FRESH key, and keeps the current key and certificate in
place until the new certificate is received and checked (right key, chains to the
fleet CA). If the certificate expired while the device was offline, it re-bootstraps
with its factory identity.

State directory (0700): ``agent.json`` (settings + schedule), ``key.pem`` (0600),
``cert.pem``, ``key.new.pem`` only while a renewal is in flight. With the ``pkcs11`` key
backend every key is generated on the token (never extractable), ``agent.json`` records
the key labels (never the PIN), no key file exists, and the mTLS renewal signs its
handshake in the token (``fleetwarden.identity.tlskey``); the rotated-out key is deleted
from the token once the new certificate is installed.
"""

from fleetwarden.agent.core import Agent, AgentConfig, AgentError

__all__ = ["Agent", "AgentConfig", "AgentError"]
