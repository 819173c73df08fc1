"""C6 signed firmware and M2 unsigned firmware, plus content scans of the images.

Images are read by the minimal MCUboot reader in ``evidence/firmware.py``; anything
without the MCUboot magic is a raw, unsigned image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from fleetwarden.assess.checks import check
from fleetwarden.assess.checks._util import device_checks, status
from fleetwarden.assess.evidence import Evidence
from fleetwarden.assess.evidence.components import vkey
from fleetwarden.assess.evidence.types import Device, FirmwareImage
from fleetwarden.assess.model import FAIL, MANUAL, PASS, Result

NOT_SCANNED = "image bytes not in the evidence (registry release); add it to firmware/"


@check(
    title="Firmware image not signed",
    severity="critical",
    rationale="An unsigned image can be replaced by anyone who can reach the update path: "
    "remote flashing of arbitrary code (mistake M2).",
    remediation="Sign every image (MCUboot imgtool) and make the bootloader verify it; "
    "refuse unsigned updates at the update server too.",
    effort="L",
    needs=("firmware",),
    controls=("C6",),
    mistakes=("M2",),
    task="signed_firmware",
    scope="file",
    likelihood=7.0,
    impact=9.0,
)
def firmware_image_unsigned(ev: Evidence) -> Iterator[Result]:
    for img in ev.firmware:
        yield status(img.signed, img.path, f"{img.format} image without a signature TLV")


@check(
    title="Firmware signature invalid or from an untrusted key",
    severity="critical",
    rationale="A signature that does not verify against the trusted keys is no better than "
    "none (mistake M2).",
    remediation="Re-sign with the release key and ship only images that verify; rotate the "
    "key if an unknown one is signing.",
    effort="M",
    needs=("firmware", "firmware_keys"),
    controls=("C6",),
    mistakes=("M2",),
    task="signed_firmware",
    scope="file",
)
def firmware_signature_invalid(ev: Evidence) -> Iterator[Result]:
    for img in ev.firmware:
        if not img.signed:
            if img.format == "mcuboot" and img.problem:
                yield FAIL(img.path, f"malformed MCUboot image: {img.problem}")
            continue
        if img.hash_ok is False:
            yield FAIL(img.path, "image hash does not match its SHA-256 TLV")
        elif img.signature_valid is None:
            yield MANUAL(img.path, "no trusted keys to verify against")
        else:
            why = img.problem or f"{img.signature_type} does not verify"
            yield status(img.signature_valid, img.path, why)


def _products(ev: Evidence) -> dict[str, list[FirmwareImage]]:
    out: dict[str, list[FirmwareImage]] = defaultdict(list)
    for img in ev.firmware:
        if img.format == "mcuboot" and img.version is not None:
            out[img.product].append(img)
    return out


@check(
    title="Security counter not monotonic (downgrade possible)",
    severity="high",
    rationale="A later version with a lower security counter than an earlier one lets an "
    "attacker roll devices back to a vulnerable release that still verifies.",
    remediation="Raise the security counter with every security release (imgtool "
    "--security-counter) and enable MCUBOOT_HW_ROLLBACK_PROT.",
    effort="S",
    needs=("firmware",),
    controls=("C6",),
    etsi=("5.3-7", "5.3-10", "5.7-1"),
    task="signed_firmware",
    scope="file",
)
def firmware_rollback_possible(ev: Evidence) -> Iterator[Result]:
    for images in _products(ev).values():
        images.sort(key=lambda i: i.version or (0, 0, 0, 0))
        best = -1
        for img in images:
            counter = img.security_counter if img.security_counter is not None else -1
            if counter < best:
                yield FAIL(img.path, f"{img.version_text} has counter {counter} < earlier {best}")
            else:
                yield PASS(img.path)
            best = max(best, counter)


@check(
    title="MCUboot image without a security counter",
    severity="low",
    rationale="Without a security counter hardware rollback protection cannot work.",
    remediation="Sign with --security-counter (or 'auto').",
    effort="S",
    needs=("firmware",),
    controls=("C6",),
    task="signed_firmware",
    scope="file",
)
def firmware_no_security_counter(ev: Evidence) -> Iterator[Result]:
    for img in ev.firmware:
        if img.format == "mcuboot" and img.signed:
            yield status(img.security_counter is not None, img.path, "no SEC_CNT TLV")


@check(
    title="Private key embedded in a firmware image",
    severity="critical",
    rationale="A private key in the image is on every device that runs it: a shared "
    "credential extracted by anyone with the file (mistake M1).",
    remediation="Remove keys from images; provision a per-device key at manufacture or enrolment.",
    effort="M",
    needs=("firmware",),
    controls=("C1",),
    mistakes=("M1",),
    extra_owasp=("I7",),
    extra_etsi=("5.4-3",),
    task="contain_shared_credentials",
    scope="file",
)
def firmware_embedded_private_key(ev: Evidence) -> Iterator[Result]:
    for img in ev.firmware:
        if not img.scanned:
            yield MANUAL(img.path, NOT_SCANNED)
            continue
        yield status(not img.private_keys, img.path, "; ".join(img.private_keys[:3]))


@check(
    title="Hard-coded credentials in a firmware image",
    severity="high",
    rationale="Passwords, tokens or URLs with credentials in the image are the same on "
    "every device (mistake M1).",
    remediation="Remove them; use per-device credentials provisioned at enrolment.",
    effort="M",
    needs=("firmware",),
    controls=("C1",),
    mistakes=("M1",),
    extra_etsi=("5.4-3",),
    task="contain_shared_credentials",
    scope="file",
)
def firmware_hardcoded_credentials(ev: Evidence) -> Iterator[Result]:
    for img in ev.firmware:
        if not img.scanned:
            yield MANUAL(img.path, NOT_SCANNED)
            continue
        yield status(not img.credentials, img.path, "; ".join(img.credentials[:3]))


@check(
    title="Telnet or debug service in a firmware image",
    severity="high",
    rationale="telnetd, gdbserver or an enabled JTAG/SWD flag give a remote or physical shell.",
    remediation="Build release images without debug services and with debug ports locked.",
    effort="M",
    needs=("firmware",),
    controls=("C6",),
    owasp=("I2", "I10"),
    etsi=("5.6-1", "5.6-4"),
    cra=("I(j)",),
    task="harden_devices",
    scope="file",
)
def firmware_debug_services(ev: Evidence) -> Iterator[Result]:
    for img in ev.firmware:
        if not img.scanned:
            yield MANUAL(img.path, NOT_SCANNED)
            continue
        yield status(not img.services, img.path, ", ".join(img.services))


@check(
    title="Device runs firmware below the minimum version",
    severity="high",
    rationale="Devices below the minimum supported version miss security fixes and may "
    "have been downgraded.",
    remediation="Update these devices; find out why they fell behind (failed update, rollback).",
    effort="M",
    needs=("inventory", "policy"),
    controls=("C6",),
    owasp=("I4", "I5", "I8"),
    etsi=("5.3-10",),
    cra=("I(a)", "I(c)"),
    task="update_devices",
)
def firmware_device_below_minimum(ev: Evidence) -> Iterator[Result]:
    assert ev.policy is not None
    minimum = ev.policy.minimum_firmware

    def test(d: Device) -> Result | None:
        floor = minimum.get(d.model or "")
        if floor is None:
            return None
        if not d.firmware_version:
            return MANUAL(d.id, "firmware_version not recorded")
        ok = vkey(d.firmware_version) >= vkey(floor)
        return status(ok, d.id, f"{d.firmware_version} < {floor}")

    yield from device_checks(ev, test)


@check(
    title="Secure boot disabled on the device",
    severity="high",
    rationale="Without secure boot the signed-firmware chain ends at the update server: "
    "anyone with physical or root access boots their own code.",
    remediation="Enable secure boot (MCUboot with signature check, eFuse/OTP key hash).",
    effort="L",
    needs=("inventory",),
    controls=("C6",),
    owasp=("I4", "I10"),
    etsi=("5.7-1",),
    task="harden_devices",
)
def firmware_secure_boot_disabled(ev: Evidence) -> Iterator[Result]:
    def test(d: Device) -> Result:
        if d.secure_boot is None:
            return MANUAL(d.id, "secure_boot not recorded")
        return status(d.secure_boot, d.id, "secure boot off")

    yield from device_checks(ev, test)
