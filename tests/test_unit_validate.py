"""``transport.send.validate_all`` alone: what a /send body must be, and the texts that say
what is wrong (the same texts the site gets in a 400)."""

from __future__ import annotations

import pytest

from socketio_webservice.transport.limits import Limits
from socketio_webservice.transport.send import BadRequest, validate_all

LIMITS = Limits(max_rooms_per_send=3, max_room_length=10, max_event_length=12, max_args_depth=3)


def test_one_message_with_a_room_or_a_list_of_rooms() -> None:
    (send,) = validate_all({"rooms": "user_1", "event": "e", "args": [1, "a"]}, LIMITS)
    assert (send.rooms, send.event, send.args) == (["user_1"], "e", [1, "a"])
    (send,) = validate_all({"rooms": ["a", "b", "a"], "event": "e"}, LIMITS)
    assert (send.rooms, send.args) == (["a", "b"], [])  # each room once; args default to none


def test_a_bulk_send_keeps_its_order() -> None:
    sends = validate_all([{"rooms": "a", "event": "e", "args": [n]} for n in range(3)], LIMITS)
    assert [s.args for s in sends] == [[0], [1], [2]]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("text", "Body must be an object"),
        ({"event": "e"}, "Field 'rooms' is missing."),
        ({"rooms": ["a", 3], "event": "e"}, "must be a room name or a list of room names"),
        ({"rooms": ["a", ""], "event": "e"}, "must be a room name or a list of room names"),
        ({"rooms": ["a", "b", "c", "d"], "event": "e"}, "holds 4 rooms; at most 3."),
        ({"rooms": "a" * 11, "event": "e"}, "a room name is longer than 10 characters"),
        ({"rooms": "a"}, "Field 'event' is missing."),
        ({"rooms": "a", "event": ""}, "Field 'event' must be a non-empty string."),
        ({"rooms": "a", "event": "e\0"}, "Field 'event' must be a non-empty string."),
        ({"rooms": "a", "event": "e" * 13}, "Field 'event' is longer than 12 characters."),
        ({"rooms": "a", "event": "_batch"}, "'_batch' is a reserved name"),
        ({"rooms": "a", "event": "disconnect"}, "'disconnect' is a reserved name"),
        ({"rooms": "a", "event": "e", "args": {"x": 1}}, "Field 'args' must be a list."),
        ({"rooms": "a", "event": "e", "args": [[[[1]]]]}, "nests deeper than 3 levels"),
        ([], "Body is an empty list"),
        ([{"rooms": "a", "event": "e"}, {"rooms": "a"}], "Message 1: Field 'event' is missing"),
    ],
)
def test_what_is_wrong_is_said(body: object, says: str) -> None:
    with pytest.raises(BadRequest, match=says.replace("(", r"\(").replace(".", r"\.")):
        validate_all(body, LIMITS)
