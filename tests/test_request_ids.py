"""The one request-id check (``agoranet.request_ids``): what a buyer may name its call, and
the exact 400 it reads otherwise."""

from __future__ import annotations

import re

import pytest

from agoranet.errors import InvalidRequestError
from agoranet.request_ids import MAX_REQUEST_ID, REQUEST_ID_HEADER, request_id


def test_a_buyer_id_within_the_rules_is_kept_and_none_gets_a_fresh_one() -> None:
    assert REQUEST_ID_HEADER == "x-request-id" and MAX_REQUEST_ID == 200
    for sent in ("a", "A-z_0.9:x", "x" * MAX_REQUEST_ID):
        assert request_id(sent) == sent
    fresh = {request_id(None) for _ in range(3)}
    assert len(fresh) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", f) for f in fresh)


@pytest.mark.parametrize("sent", ["", "x" * (MAX_REQUEST_ID + 1), "a b", "a/b", "é", "a\n"])
def test_an_id_outside_the_rules_is_a_400_naming_it(sent: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        request_id(sent)
    assert refused.value.param == "request_id"
    assert str(refused.value) == (f"the request id {sent[:80]!r} must be 1 to 200 letters, "
                                  "digits or '._:-'")


def test_a_long_bad_id_is_quoted_only_in_part() -> None:
    sent = "y" * 79 + "z" + "!" * 300
    with pytest.raises(InvalidRequestError, match=re.escape(repr("y" * 79 + "z") + " must")):
        request_id(sent)


@pytest.mark.parametrize(("sent", "kind"), [(7, "int"), (["a"], "list"), (b"a", "bytes")])
def test_an_id_that_is_no_string_is_a_400_naming_its_type(sent: object, kind: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        request_id(sent)
    assert refused.value.param == "request_id"
    assert str(refused.value) == f"the request id must be a string, not {kind}"
