"""Unique device identity (control C1) and key rotation (control C5).

Where things are (for a newcomer, and for the gateway):

- fleet CA, profiles, CRL building, rollover: ``identity.ca`` (``FleetCA``, ``CaPaths``)
- key backends (file, PKCS#11):               ``identity.keys``
- TLS client auth with a token key:           ``identity.tlskey`` (``use_token_key``)
- issuance, tokens, revocation, M1 check:     ``identity.service`` (``IdentityService``)
- EST server (RFC 7030):                      ``identity.est``
- TLS (server cert, client-cert scope ext):   ``identity.tls``
- in ``fleetwarden up``:                      ``identity.component``
- device agent:                               ``fleetwarden.agent``

For the gateway: the CA chain is ``CaPaths.of(data_dir).chain`` (every accepted
issuing CA + root), the CRLs ``CaPaths.of(data_dir).crl_bundle`` (PEM, one CRL per
issuing CA + the root's), a broker certificate comes from
``identity.tls.issue_server_certificate``, and revocations and issuing-CA rollovers
arrive on the bus as Device Config State Change events recognised by
``identity.service.revocation_of`` and ``rollover_of``.
"""
