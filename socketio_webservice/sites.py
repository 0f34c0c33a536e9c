"""A site's settings: the bottom of the package, which every layer may use.

Parsed from sites.yml or the environment by ``webservice.config``; the actors need a site's
name, the transport its URLs and keys, the store nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SiteConfig"]


@dataclass(frozen=True, slots=True)
class SiteConfig:
    name: str
    auth_url: str
    api_key: str
    auth_scheme: str = "Bearer"
    user_room_prefix: str = ""
    update_user_url: str = ""
    public_channel: str = ""

    @property
    def reliable(self) -> bool:
        """Sites with user rooms store every message until the device acks it."""
        return bool(self.user_room_prefix)

    def is_user_room(self, room: str) -> bool:
        return room.startswith(self.user_room_prefix) or self.is_public_channel(room)

    def is_public_channel(self, room: str) -> bool:
        return bool(self.public_channel) and room == self.public_channel

    def user_id(self, user_room: str) -> str:
        return user_room[len(self.user_room_prefix) :]
