"""Spawns a UserActor for a user on first need, watches it, and retires it when idle."""

from __future__ import annotations

import asyncio

from loguru import logger

from ..storage import Store
from .messages import ActorMessage, Attach, CatchUp, Deliver
from .outbox import Outbox
from .stats import DeliveryStats
from .user_actor import UserActor


class ActorRegistry:
    """The actors of one site on this node."""

    def __init__(self, site: str, store: Store, outbox: Outbox) -> None:
        self.site = site
        self.store = store
        self.outbox = outbox
        self.actors: dict[str, UserActor] = {}
        self.stats = DeliveryStats()
        self._tasks: dict[UserActor, asyncio.Task[None]] = {}

    def tell(self, user: str, message: ActorMessage) -> None:
        """Post to the user's actor, spawning it if the user has none on this node."""
        actor = self.actors.get(user)
        if actor is None:
            actor = self._spawn(user)
        actor.tell(message)

    def tell_everyone(self, message: ActorMessage) -> None:
        """Post to every actor here (every user with sockets on this node)."""
        for actor in list(self.actors.values()):
            actor.tell(message)

    def tell_if_present(self, user: str, message: ActorMessage) -> None:
        """Post only if the user has sockets here (nothing to do for anyone else)."""
        actor = self.actors.get(user)
        if actor is not None:
            actor.tell(message)

    def attach(self, user: str, sid: str) -> None:
        """A registered socket's connect is answered: greet it. An idle actor does it here,
        as ``deliver`` below, without starting a task for it."""
        actor = self.actors.get(user)
        if actor is None or not actor.attach_now(sid):
            self.tell(user, Attach(sid))

    def deliver(self, user: str, deliver: Deliver) -> None:
        """Hand a stored message to the user's actor, if the user has sockets here.

        An idle actor with an empty mailbox decides it right here, without a wake-up of its
        task: nothing else of the user's can be in progress, so the order is the same as
        through the mailbox. This is the fan-out hot path: one call per user per message.
        """
        actor = self.actors.get(user)
        if actor is None:
            return
        if not actor.ready_for_inline:
            actor.tell(deliver)
            return
        try:
            actor.deliver(deliver)
        except Exception as exc:  # stored already: a re-read will send it
            logger.opt(exception=exc).error("actor {} failed to deliver inline", user)
            actor.tell(CatchUp())

    def _spawn(self, user: str) -> UserActor:
        actor = UserActor(
            self.site, user, self.store, self.outbox, self.stats, self._retire, self._start
        )
        self.actors[user] = actor
        return actor

    def _start(self, actor: UserActor) -> None:
        """The actor has a message and no task: give it one, for as long as it has messages."""
        self._tasks[actor] = asyncio.create_task(self._supervise(actor))

    async def _supervise(self, actor: UserActor) -> None:
        """Run the actor until its mailbox is empty; if it fails (a bug in its own loop), a
        fresh actor takes over all it held. (A wrapper, not a done callback: that costs a
        context copy per run.)"""
        try:
            await actor.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.opt(exception=exc).error("actor {} crashed; respawning", actor.user)
            if self.actors.get(actor.user) is actor:
                del self.actors[actor.user]
                actor.hand_over(self._spawn(actor.user))
        finally:
            if self._tasks.get(actor) is asyncio.current_task():
                del self._tasks[actor]

    def _retire(self, actor: UserActor) -> None:
        """Called by the actor itself when it has no sockets and an empty mailbox; nothing can
        be posted to it in between, since both happen without yielding."""
        if self.actors.get(actor.user) is actor:
            del self.actors[actor.user]

    async def drain(self, timeout: float) -> None:
        """Let every actor finish what is in its mailbox, then stop them."""
        drained = asyncio.gather(*(actor.drained() for actor in self.actors.values()))
        try:
            await asyncio.wait_for(drained, timeout)
        except TimeoutError:
            logger.warning(
                "site={}: actors still busy after {}s; stopping them", self.site, timeout
            )
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
