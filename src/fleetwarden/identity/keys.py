"""Key backends: one small interface (public key + sign) for CA and device keys.

Backends:

- :class:`SoftwareKey`: a key held in memory, loaded from (or saved to) an encrypted
  PKCS#8 file, mode 0600, passphrase from an environment variable or a file;
- :class:`Pkcs11Key`: a key generated *on* a PKCS#11 token (SoftHSM2 in tests) with
  ``CKA_SENSITIVE`` true and ``CKA_EXTRACTABLE`` false, so it never leaves the token;
  every signature is made by the token;
- :class:`TpmKey`: a key inside a TPM 2.0 (tpm2-pytss; swtpm in tests), derived from the
  TPM's seed per label, never leaving it.

``cryptography`` only signs with its own key objects, so for a token key the builders
(certificate, CRL, CSR) are first signed with a throw-away key of the same algorithm;
the to-be-signed bytes (which already carry the right signature algorithm identifier
and all names and extensions) are then signed by the backend and the DER is
re-assembled (:func:`sign_certificate`, :func:`sign_crl`, :func:`sign_csr`).

Invariants: the private key of a token backend is never read; the software backend
never writes a key unencrypted; signatures use SHA-256 for P-256 (and RSA), SHA-384
for P-384, and pure EdDSA for Ed25519.
"""

from __future__ import annotations

import os
import threading
from functools import cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from fleetwarden._internal.files import write_secret
from fleetwarden.identity.errors import KeyBackendError

#: key types a backend can hold
KEY_ALGORITHMS = ("ec-p256", "ec-p384", "ed25519")


@runtime_checkable
class KeyBackend(Protocol):
    """Anything that can sign and tell its public key."""

    algorithm: str

    def public_key(self) -> CertificateIssuerPublicKeyTypes: ...

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (DER signature for ECDSA, raw for Ed25519)."""
        ...


def hash_for(algorithm: str) -> hashes.SHA256 | hashes.SHA384 | None:
    if algorithm == "ec-p384":
        return hashes.SHA384()
    if algorithm == "ed25519":
        return None
    return hashes.SHA256()


def algorithm_of(key: Any) -> str:
    """Our name of a (public or private) key's algorithm."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        name = key.curve.name
        return {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(name, f"ec-{name}")
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "rsa"
    return type(key).__name__


def generate_private_key(algorithm: str) -> CertificateIssuerPrivateKeyTypes:
    if algorithm == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise KeyBackendError(f"unsupported key algorithm {algorithm!r}")


class SoftwareKey:
    """A private key in process memory; persisted only as encrypted PKCS#8."""

    def __init__(self, key: CertificateIssuerPrivateKeyTypes) -> None:
        self.private_key = key
        self.algorithm = algorithm_of(key)
        self._hash = hash_for(self.algorithm)

    @classmethod
    def generate(cls, algorithm: str = "ec-p256") -> SoftwareKey:
        return cls(generate_private_key(algorithm))

    def public_key(self) -> CertificateIssuerPublicKeyTypes:
        return self.private_key.public_key()

    def sign(self, data: bytes) -> bytes:
        k = self.private_key
        if isinstance(k, ec.EllipticCurvePrivateKey):
            assert self._hash is not None
            return k.sign(data, ec.ECDSA(self._hash))
        if isinstance(k, ed25519.Ed25519PrivateKey):
            return k.sign(data)
        if isinstance(k, rsa.RSAPrivateKey):
            return k.sign(data, padding.PKCS1v15(), hashes.SHA256())
        raise KeyBackendError(f"cannot sign with {self.algorithm}")

    def save(self, path: Path, passphrase: bytes | None) -> None:
        """Write the key as PKCS#8 (encrypted when a passphrase is given), mode 0600."""
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc
        )
        write_secret(path, pem)

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None) -> SoftwareKey:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyBackendError(f"cannot read key file {path}: {exc.strerror}") from exc
        try:
            key = serialization.load_pem_private_key(data, passphrase)
        except (ValueError, TypeError) as exc:
            raise KeyBackendError(
                f"cannot decrypt key file {path}: wrong or missing passphrase"
            ) from exc
        if not isinstance(
            key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
        ):
            raise KeyBackendError(f"{path}: unsupported key type")
        return cls(key)


def read_secret(env_name: str | None, file: Path | None, what: str) -> bytes | None:
    """A secret from an environment variable (first) or a file; None when neither."""
    if env_name and os.environ.get(env_name):
        return os.environ[env_name].encode()
    if file is not None:
        try:
            value = file.read_bytes().strip()
        except OSError as exc:
            raise KeyBackendError(f"cannot read the {what} file {file}: {exc.strerror}") from exc
        if not value:
            raise KeyBackendError(f"the {what} file {file} is empty")
        return value
    return None


class Pkcs11Key:
    """An EC key that lives on a PKCS#11 token and signs there.

    One session per key object, guarded by a lock: PKCS#11 sessions are not safe for
    concurrent use from several threads.
    """

    def __init__(
        self, session: tuple[Any, threading.Lock], private: Any, public: Any, algorithm: str
    ) -> None:
        self._session, self._lock = session
        self._private = private
        self._public_obj = public
        self._pub_der = _pkcs11_public_der(public)
        self.algorithm = algorithm
        loaded = serialization.load_der_public_key(self._pub_der)
        if not isinstance(loaded, ec.EllipticCurvePublicKey):
            raise KeyBackendError("token key is not an EC key")
        self._public = loaded

    @staticmethod
    def _open(module: Path, token_label: str, pin: bytes | None) -> tuple[Any, threading.Lock]:
        """One shared, logged-in session per token and process (with its lock).

        PKCS#11 login state belongs to the application, not to a session, and closing
        the session that logged in can invalidate the others' handles on some tokens;
        sharing one session per token avoids both traps."""
        key = (str(module), token_label)
        with _SESSIONS_LOCK:
            if key in _SESSIONS:
                return _SESSIONS[key]
            try:
                import pkcs11

                lib = pkcs11.lib(str(module))
                token = lib.get_token(token_label=token_label)
                try:
                    session = token.open(user_pin=pin.decode() if pin else None, rw=True)
                except pkcs11.UserAlreadyLoggedIn:
                    session = token.open(rw=True)
            except Exception as exc:  # python-pkcs11 raises many unrelated types
                hint = ""
                if type(exc).__name__ in ("PinIncorrect", "PinLenRange", "PinInvalid"):
                    hint = " (wrong PIN)"
                elif type(exc).__name__ == "NoSuchToken":
                    hint = " (no such token)"
                raise KeyBackendError(
                    f"cannot open PKCS#11 token {token_label!r} via {module}{hint}: {exc!r}"
                ) from exc
            _SESSIONS[key] = (session, threading.Lock())
            return _SESSIONS[key]

    @classmethod
    def generate(
        cls, module: Path, token_label: str, pin: bytes | None, label: str, algorithm: str
    ) -> Pkcs11Key:
        """Generate a key pair on the token: sensitive, never extractable."""
        import pkcs11
        from pkcs11 import Attribute, KeyType
        from pkcs11.util.ec import encode_named_curve_parameters

        curve = {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}.get(algorithm)
        if curve is None:
            raise KeyBackendError(f"PKCS#11 backend supports ec-p256 and ec-p384, not {algorithm}")
        shared = cls._open(module, token_label, pin)
        session, lock = shared
        try:
            with lock:
                try:
                    session.get_key(label=label, object_class=pkcs11.ObjectClass.PRIVATE_KEY)
                except pkcs11.NoSuchKey:
                    pass
                else:
                    raise KeyBackendError(f"token already holds a key labelled {label!r}")
                params = session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)},
                    local=True,
                )
                private_template = {
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.TOKEN: True,
                }
                public_template: dict[Any, Any] = {}
                if _is_tpm2_pkcs11(module):
                    # tpm2-pkcs11 makes every EC key a TPM object that may both sign and
                    # decrypt (ECDH), and refuses a template that says otherwise
                    # ("User specified and TPM specified attr mismatch", 1.9): declare
                    # what the TPM will create. The key still never leaves the TPM.
                    public_template = {Attribute.VERIFY: True, Attribute.ENCRYPT: True}
                    private_template |= {Attribute.SIGN: True, Attribute.DECRYPT: True}
                pub, priv = params.generate_keypair(
                    store=True,
                    label=label,
                    public_template=public_template,
                    private_template=private_template,
                )
        except KeyBackendError:
            raise
        except Exception as exc:
            raise KeyBackendError(f"key generation on the token failed: {exc!r}") from exc
        return cls(shared, priv, pub, algorithm)

    @classmethod
    def load(cls, module: Path, token_label: str, pin: bytes | None, label: str) -> Pkcs11Key:
        import pkcs11

        shared = cls._open(module, token_label, pin)
        session, lock = shared
        try:
            with lock:
                priv = session.get_key(label=label, object_class=pkcs11.ObjectClass.PRIVATE_KEY)
                pub = session.get_key(label=label, object_class=pkcs11.ObjectClass.PUBLIC_KEY)
        except Exception as exc:
            raise KeyBackendError(f"no key labelled {label!r} on the token: {exc!r}") from exc
        loaded = serialization.load_der_public_key(_pkcs11_public_der(pub))
        return cls(shared, priv, pub, algorithm_of(loaded))

    def public_key(self) -> CertificateIssuerPublicKeyTypes:
        return self._public

    def sign(self, data: bytes) -> bytes:
        from pkcs11 import Mechanism

        # Hash here, sign the digest on the token with plain CKM_ECDSA: SoftHSM2 and many
        # secure elements lack the combined CKM_ECDSA_SHA256/384 mechanisms. The digest
        # is not secret; the key never leaves the token either way.
        h = hashes.Hash(hashes.SHA384() if self.algorithm == "ec-p384" else hashes.SHA256())
        h.update(data)
        digest = h.finalize()
        with self._lock:
            raw = self._private.sign(digest, mechanism=Mechanism.ECDSA)
        # PKCS#11 returns r || s; X.509 wants the DER SEQUENCE { r, s }.
        half = len(raw) // 2
        return encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )

    def attribute(self, name: str) -> Any:
        """A private-key attribute by name (``SENSITIVE``, ``EXTRACTABLE``...), for checks."""
        from pkcs11 import Attribute

        with self._lock:
            return self._private[getattr(Attribute, name)]

    def destroy(self) -> None:
        """Delete the key pair from the token (a rotated-out device key)."""
        with self._lock:
            try:
                self._private.destroy()
                self._public_obj.destroy()
            except Exception as exc:
                raise KeyBackendError(f"cannot delete the key from the token: {exc!r}") from exc

    def close(self) -> None:
        """Keys share their token's session (see :meth:`_open`); nothing to release."""


_SESSIONS: dict[tuple[str, str], tuple[Any, threading.Lock]] = {}
_SESSIONS_LOCK = threading.Lock()


def reset_pkcs11(module: Path) -> None:
    """Finalize and re-initialize a PKCS#11 module in this process and forget the shared
    sessions (a module reads its configuration, e.g. SOFTHSM2_CONF, at initialisation)."""
    import pkcs11

    with _SESSIONS_LOCK:
        for key in [k for k in _SESSIONS if k[0] == str(module)]:
            del _SESSIONS[key]
        pkcs11.lib(str(module)).reinitialize()


def _pkcs11_public_der(pub: Any) -> bytes:
    from pkcs11.util.ec import encode_ec_public_key

    return bytes(encode_ec_public_key(pub))


class TpmKey:
    """An ECDSA key inside a TPM 2.0 (tpm2-pytss; swtpm in tests).

    The key is a *primary* key of the owner hierarchy whose template carries a
    per-label ``unique`` value: the TPM derives it from its seed, so it is created and
    used inside the TPM (fixedTPM, fixedParent, sensitiveDataOrigin), is found again
    after a restart by deriving it from the same label, and no key blob is stored
    anywhere. A fresh key is a new label. Anyone holding the owner hierarchy's
    authorisation can derive it too: set an owner password on real TPMs.
    """

    def __init__(self, tcti: str, label: str, algorithm: str = "ec-p256") -> None:
        try:
            import hashlib

            from tpm2_pytss import ESAPI, TPM2B_PUBLIC
        except ImportError as exc:  # optional dependency (extra "tpm")
            raise KeyBackendError(
                "the TPM backend needs tpm2-pytss (pip install tpm2-pytss)"
            ) from exc
        spec = {"ec-p256": "ecc256:ecdsa-sha256", "ec-p384": "ecc384:ecdsa-sha384"}.get(algorithm)
        if spec is None:
            raise KeyBackendError(f"TPM backend supports ec-p256 and ec-p384, not {algorithm}")
        self.algorithm = algorithm
        self._lock = threading.Lock()
        try:
            self._esapi = ESAPI(tcti)
            template = TPM2B_PUBLIC.parse(
                spec,
                objectAttributes="fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
            )
            template.publicArea.unique.ecc.x = hashlib.sha256(label.encode()).digest()
            self._handle, pub, *_ = self._esapi.create_primary(None, template)
        except KeyBackendError:
            raise
        except Exception as exc:  # tpm2-pytss raises TSS2_Exception and friends
            raise KeyBackendError(f"TPM key {label!r} via {tcti!r}: {exc}") from exc
        loaded = serialization.load_der_public_key(pub.to_der())
        if not isinstance(loaded, ec.EllipticCurvePublicKey):
            raise KeyBackendError("TPM key is not an EC key")
        self._public = loaded

    def public_key(self) -> CertificateIssuerPublicKeyTypes:
        return self._public

    def sign(self, data: bytes) -> bytes:
        from tpm2_pytss import TPM2_ALG, TPMT_SIG_SCHEME

        p384 = self.algorithm == "ec-p384"
        h = hashes.Hash(hashes.SHA384() if p384 else hashes.SHA256())
        h.update(data)
        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.any.hashAlg = TPM2_ALG.SHA384 if p384 else TPM2_ALG.SHA256
        with self._lock:
            sig = self._esapi.sign(self._handle, h.finalize(), scheme)
        return encode_dss_signature(
            int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big"),
            int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big"),
        )

    def close(self) -> None:
        with self._lock:
            self._esapi.flush_context(self._handle)
            self._esapi.close()


# -- signing builders with any backend ----------------------------------------------


@cache
def _stand_in(algorithm: str) -> CertificateIssuerPrivateKeyTypes:
    """A throw-away key of the backend's algorithm, used only to obtain TBS bytes."""
    return generate_private_key(algorithm)


def _tlv(data: bytes, pos: int) -> tuple[int, int]:
    """(start of value, end of element) of the DER element starting at ``pos``."""
    length = data[pos + 1]
    if length < 0x80:
        return pos + 2, pos + 2 + length
    n = length & 0x7F
    value_len = int.from_bytes(data[pos + 2 : pos + 2 + n], "big")
    start = pos + 2 + n
    return start, start + value_len


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _resign(signed_der: bytes, tbs: bytes, backend: KeyBackend) -> bytes:
    """Replace the signature of a signed structure {tbs, algId, BIT STRING} by the
    backend's signature over the same TBS bytes."""
    outer_start, _ = _tlv(signed_der, 0)
    _, tbs_end = _tlv(signed_der, outer_start)
    _, alg_end = _tlv(signed_der, tbs_end)
    alg = signed_der[tbs_end:alg_end]
    sig = backend.sign(tbs)
    bitstring = b"\x03" + _der_len(len(sig) + 1) + b"\x00" + sig
    body = tbs + alg + bitstring
    return b"\x30" + _der_len(len(body)) + body


def _software(backend: KeyBackend) -> CertificateIssuerPrivateKeyTypes | None:
    return backend.private_key if isinstance(backend, SoftwareKey) else None


def _is_tpm2_pkcs11(module: Path) -> bool:
    """Whether ``module`` (already loaded) is tpm2-pkcs11, the TPM 2.0 PKCS#11 module."""
    import pkcs11

    try:
        lib_id = str(pkcs11.lib(str(module)).manufacturer_id)  # the loaded library, cached
    except Exception:  # python-pkcs11 raises many unrelated types
        return False
    return lib_id.strip().startswith("tpm2-software")


def sign_certificate(builder: x509.CertificateBuilder, backend: KeyBackend) -> x509.Certificate:
    key = _software(backend)
    if key is not None:
        return builder.sign(key, hash_for(backend.algorithm))
    draft = builder.sign(_stand_in(backend.algorithm), hash_for(backend.algorithm))
    der = _resign(
        draft.public_bytes(serialization.Encoding.DER), draft.tbs_certificate_bytes, backend
    )
    return x509.load_der_x509_certificate(der)


def sign_crl(
    builder: x509.CertificateRevocationListBuilder, backend: KeyBackend
) -> x509.CertificateRevocationList:
    key = _software(backend)
    if key is not None:
        return builder.sign(key, hash_for(backend.algorithm))
    draft = builder.sign(_stand_in(backend.algorithm), hash_for(backend.algorithm))
    der = _resign(draft.public_bytes(serialization.Encoding.DER), draft.tbs_certlist_bytes, backend)
    return x509.load_der_x509_crl(der)


def sign_csr(
    builder: x509.CertificateSigningRequestBuilder, backend: KeyBackend
) -> x509.CertificateSigningRequest:
    key = _software(backend)
    if key is not None:
        return builder.sign(key, hash_for(backend.algorithm))
    # A CSR builder takes its public key from the signing key, so the stand-in's key
    # is inside the TBS: swap in the backend's SubjectPublicKeyInfo before signing.
    # CertificationRequestInfo ::= SEQUENCE { version, subject, subjectPKInfo, attributes }
    draft = builder.sign(_stand_in(backend.algorithm), hash_for(backend.algorithm))
    tbs = draft.tbs_certrequest_bytes
    start, end = _tlv(tbs, 0)
    _, version_end = _tlv(tbs, start)
    _, subject_end = _tlv(tbs, version_end)
    _, spki_end = _tlv(tbs, subject_end)
    spki = backend.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body = tbs[start:subject_end] + spki + tbs[spki_end:end]
    real_tbs = b"\x30" + _der_len(len(body)) + body
    signed = draft.public_bytes(serialization.Encoding.DER)
    outer_start, _ = _tlv(signed, 0)
    _, tbs_end = _tlv(signed, outer_start)
    _, alg_end = _tlv(signed, tbs_end)
    sig = backend.sign(real_tbs)
    rest = real_tbs + signed[tbs_end:alg_end] + b"\x03" + _der_len(len(sig) + 1) + b"\x00" + sig
    return x509.load_der_x509_csr(b"\x30" + _der_len(len(rest)) + rest)
