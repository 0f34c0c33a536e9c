"""Hands stored deliveries to the actors of the devices' users, wherever those sockets are."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..actors.messages import CatchUp, Deliver
from ..storage import Delivery, Message
from .node_bus import NodeBus
from .site_namespace import SiteNamespace
from .stats import TransportStats


class Dispatcher:
    def __init__(
        self,
        node_id: str,
        namespaces: Mapping[str, SiteNamespace],
        bus: NodeBus,
        stats: TransportStats,
    ) -> None:
        self.node_id = node_id
        self.bus = bus
        self.stats = stats
        self.namespaces = namespaces

    async def dispatch(
        self, site: str, stored: Sequence[tuple[Message, Sequence[Delivery]]]
    ) -> None:
        """Deliver here what is connected here; signal each other node once per message.
        ``stored``: the messages of one /send (several for a bulk send), in order, each with
        the devices it was stored for."""
        for message, deliveries in stored:
            here: list[Delivery] = []
            elsewhere: dict[str, list[Delivery]] = defaultdict(list)
            for delivery in deliveries:
                for node in delivery.nodes:
                    if node == self.node_id:
                        here.append(delivery)
                    else:
                        elsewhere[node].append(delivery)
            self.deliver_here(site, message, here)
            for node, batch in elsewhere.items():
                await self.bus.publish(node, site, message, batch)

    async def broadcast(
        self, site: str, rooms: Sequence[str], event: str, args: Sequence[Any]
    ) -> None:
        """A plain site's send: to the sockets in ``rooms`` here, then to every other node's
        (best effort: nothing is stored for a plain site)."""
        await self.emit_here(site, rooms, event, args)
        await self.bus.broadcast(site, rooms, event, args)

    async def emit_here(
        self, site: str, rooms: Sequence[str], event: str, args: Sequence[Any]
    ) -> None:
        namespace = self.namespaces.get(site)
        if namespace is not None:
            namespace.send_to_rooms(rooms, Message(event, list(args)).payload)

    def deliver_here(self, site: str, message: Message, deliveries: Sequence[Delivery]) -> None:
        namespace = self.namespaces.get(site)
        if namespace is None:
            return
        by_user: dict[str, dict[str, int]] = defaultdict(dict)
        for delivery in deliveries:
            by_user[delivery.user][delivery.device] = delivery.seq
        for user, seqs in by_user.items():
            namespace.registry.deliver(user, Deliver(message, seqs))

    async def disconnect_user(self, site: str, user: str, nodes: Iterable[str]) -> int:
        """Close the user's sockets on each of ``nodes`` (an operator's decision): here at
        once, elsewhere by a signal. How many sockets were closed here."""
        closed = 0
        for node in set(nodes):
            if node == self.node_id:
                closed = await self.disconnect_here(site, user)
            else:
                await self.bus.publish_disconnect(node, site, user)
        return closed

    async def disconnect_here(self, site: str, user: str) -> int:
        namespace = self.namespaces.get(site)
        return 0 if namespace is None else await namespace.disconnect_user(user)

    def catch_up_everyone(self) -> None:
        """After missed signals: every actor here re-reads its devices' queues."""
        self.stats.catch_ups += 1
        for namespace in self.namespaces.values():
            for user in list(namespace.registry.actors):
                namespace.registry.tell_if_present(user, CatchUp())
