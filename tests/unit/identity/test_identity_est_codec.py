"""EST wire decoding: base64 with any whitespace (RFC 8951), refusals otherwise."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetwarden.identity.est import _Refusal, decode_base64_der


@given(st.binary(min_size=1, max_size=2000))
def test_base64_roundtrip_with_line_breaks(data: bytes) -> None:
    assert decode_base64_der(base64.encodebytes(data)) == data
    assert decode_base64_der(base64.b64encode(data)) == data
    assert decode_base64_der(b"  " + base64.b64encode(data) + b"\r\n") == data


@pytest.mark.parametrize("body", [b"", b"   ", b"abc", b"@@@@", b"YWJj\x00"])
def test_bad_base64_refused(body: bytes) -> None:
    with pytest.raises(_Refusal) as err:
        decode_base64_der(body)
    assert err.value.status == 400
