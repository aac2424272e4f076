"""Request validation as the pure function it is: every malformed body, without a gateway.

The route's half — that such a refusal is a 400 in OpenAI's error shape, with the request id — is
`tests/test_errors.py::test_a_malformed_request_is_a_400_in_openai_shape_naming_the_field`.
"""

from __future__ import annotations

import pytest

from policies.errors import InvalidRequest
from policies.validation import parse_chat_request, parse_json
from tests.test_errors import MALFORMED


@pytest.mark.parametrize(("body", "param", "code", "fragment"), MALFORMED)
def test_a_malformed_request_is_refused_naming_the_field(
    body: bytes, param: str | None, code: str, fragment: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(parse_json(body))
    assert (caught.value.code, caught.value.param) == (code, param)
    assert caught.value.message and fragment in caught.value.message


def test_a_well_formed_request_passes() -> None:
    chat = parse_chat_request(parse_json(b'{"model": "sim-1", "messages": [{"role": "user", "content": "hi"}]}'))
    assert (chat.model, chat.stream, chat.max_tokens, chat.n, chat.message_count) == ("sim-1", False, None, 1, 1)
