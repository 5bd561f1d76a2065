"""The application side: a user service that knows about events, not about queues."""

from __future__ import annotations

from dataclasses import dataclass

from queuekit import EventManager


@dataclass
class User:
    id: int
    name: str
    email: str


class UserService:
    """Saves users and announces it; whoever listens decides what follows."""

    def __init__(self, events: EventManager) -> None:
        self.events = events
        self.users: dict[int, User] = {}

    def save(self, user: User) -> None:
        self.users[user.id] = user
        self.events.trigger("user.saved", user, id=user.id, name=user.name, email=user.email)
