"""Unique device identity (control C1) and key rotation (control C5).

Where things are (for a newcomer, and for the gateway):

- fleet CA, profiles, CRL building:           ``identity.ca`` (``FleetCA``, ``CaPaths``)
- key backends (file, PKCS#11):               ``identity.keys``
- TLS client auth with a token key:           ``identity.tlskey`` (``use_token_key``)
- issuance, tokens, revocation, M1 check:     ``identity.service`` (``IdentityService``)
- EST server (RFC 7030):                      ``identity.est``
- TLS (server cert, client-cert scope ext):   ``identity.tls``
- in ``fleetwarden up``:                      ``identity.component``
- device agent:                               ``fleetwarden.agent``

For the gateway: the CA chain is ``CaPaths.of(data_dir).chain``, the CRL file
``CaPaths.of(data_dir).crl`` (DER; ``crl_pem`` for PEM), a broker certificate comes
from ``identity.tls.issue_server_certificate``, and revocations arrive on the bus as
Device Config State Change events recognised by ``identity.service.revocation_of``.
"""
