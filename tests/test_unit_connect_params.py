"""``transport.site_namespace.connect_params`` alone: a connect's token, deviceId and meta read
from its query string as ``urllib.parse.parse_qs`` reads them, whatever the client escaped."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from socketio_webservice.transport.site_namespace import QUERY_NAMES, connect_params

QUERIES = [
    "token=t1&deviceId=d1&EIO=4&transport=websocket",
    "token=a%20b%2Bc&deviceId=x+y&meta=%7B%22k%22%3A1%7D",  # escapes, a plus for a space
    "token=first&token=second",  # the last one counts
    "token&meta=&deviceId=",  # blank values kept
    "&&token=a=b&",  # empty pairs skipped, '=' inside a value
    "tok%65n=escaped-name&device%49d=d",  # an escaped name
    "deviceId=%E2%82%AC&meta=%ZZ%e2",  # UTF-8, and escapes that are not (replaced)
    "transport=polling&t=OfR3x&b64=1",
    "",
]


@pytest.mark.parametrize("query", QUERIES)
def test_the_query_reads_as_parse_qs_reads_it(query: str) -> None:
    expected = {
        name: values[-1]
        for name, values in parse_qs(query, keep_blank_values=True).items()
        if name in QUERY_NAMES
    }
    assert connect_params({"QUERY_STRING": query}, None) == expected


def test_the_v4_clients_auth_wins_over_the_query() -> None:
    params = connect_params(
        {"QUERY_STRING": "token=old&deviceId=d"}, {"token": "new", "meta": 7, "deviceId": True}
    )
    assert params == {"token": "new", "deviceId": "d", "meta": "7"}
