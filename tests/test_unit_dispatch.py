"""``transport.dispatch.Dispatcher`` alone: stored deliveries go to the actors of this node's
devices, and one signal goes to each other node that holds a target, never to the others."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from socketio_webservice.actors.messages import CatchUp, Deliver
from socketio_webservice.storage import Delivery, Message
from socketio_webservice.transport.dispatch import Dispatcher
from socketio_webservice.transport.stats import TransportStats


class Registry:
    def __init__(self) -> None:
        self.delivered: list[tuple[str, Deliver]] = []
        self.told: list[tuple[str, Any]] = []
        self.actors = {"user_1": object(), "user_2": object()}

    def deliver(self, user: str, deliver: Deliver) -> None:
        self.delivered.append((user, deliver))

    def tell_if_present(self, user: str, message: Any) -> None:
        self.told.append((user, message))


class Namespace:
    def __init__(self) -> None:
        self.registry = Registry()
        self.closed: list[str] = []

    async def disconnect_user(self, user: str) -> int:
        self.closed.append(user)
        return 2


class Bus:
    def __init__(self) -> None:
        self.published: list[tuple[str, str, Message, list[Delivery]]] = []
        self.disconnects: list[tuple[str, str, str]] = []

    async def publish(
        self, node: str, site: str, message: Message, deliveries: Sequence[Delivery]
    ) -> None:
        self.published.append((node, site, message, list(deliveries)))

    async def publish_disconnect(self, node: str, site: str, user: str) -> None:
        self.disconnects.append((node, site, user))


def dispatcher() -> tuple[Dispatcher, Namespace, Bus, TransportStats]:
    shop, bus, stats = Namespace(), Bus(), TransportStats()
    return Dispatcher("here", {"shop": shop}, bus, stats), shop, bus, stats  # type: ignore[arg-type]


async def test_here_to_the_actors_elsewhere_one_signal_per_node() -> None:
    send, shop, bus, _ = dispatcher()
    message = Message("n", [1])
    deliveries = [
        Delivery("user_1", "phone", 4, ("here",)),
        Delivery("user_1", "laptop", 9, ("here", "b")),  # connected on two nodes
        Delivery("user_2", "phone", 1, ("b",)),
        Delivery("user_3", "phone", 2, ("c",)),
        Delivery("user_4", "phone", 7, ()),  # offline: stored, nobody to tell
    ]
    await send.dispatch("shop", [(message, deliveries)])
    assert [(user, d.seqs) for user, d in shop.registry.delivered] == [
        ("user_1", {"phone": 4, "laptop": 9})  # one hand-over per user, every device of it
    ]
    assert {
        (node, tuple((d.user, d.device) for d in batch)) for node, _, _, batch in bus.published
    } == {
        ("b", (("user_1", "laptop"), ("user_2", "phone"))),
        ("c", (("user_3", "phone"),)),
    }
    assert all(m is message for _, _, m, _ in bus.published)


async def test_an_unknown_site_is_handed_to_no_one() -> None:
    send, shop, bus, _ = dispatcher()
    await send.dispatch("gone", [(Message("n", []), [Delivery("u", "d", 1, ("here",))])])
    assert shop.registry.delivered == [] and bus.published == []


async def test_catch_up_and_disconnect_reach_every_actor_and_node_concerned() -> None:
    send, shop, bus, stats = dispatcher()
    send.catch_up_everyone()
    assert sorted(user for user, _ in shop.registry.told) == ["user_1", "user_2"]
    assert all(isinstance(m, CatchUp) for _, m in shop.registry.told)
    assert stats.catch_ups == 1
    closed = await send.disconnect_user("shop", "user_1", ["here", "b", "b"])
    assert (closed, shop.closed, bus.disconnects) == (2, ["user_1"], [("b", "shop", "user_1")])
