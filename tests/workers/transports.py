"""Test transports: the memory broker with fewer capabilities, registered by scheme.

Importing this module registers ``qktest-nodelay://`` (no native delay, priority, priority
ranges or dedup: the core must emulate delays and keys through the job store and refuse the
rest) and
``qktest-small://`` (a 256-byte message limit).
"""

from __future__ import annotations

from dataclasses import replace

from queuekit.adapters.memory import MemoryTransport
from queuekit.spi import register_transport


class NoDelayTransport(MemoryTransport):
    name = "memory-nodelay"
    capabilities = replace(
        MemoryTransport.capabilities,
        delay=False,
        priority=False,
        priority_range=False,
        dedup=False,
        reasons={},
    )


class SmallTransport(MemoryTransport):
    name = "memory-small"
    capabilities = replace(MemoryTransport.capabilities, max_message_size=256)


NODELAY = "qktest-nodelay"
SMALL = "qktest-small"
register_transport(NODELAY, NoDelayTransport)
register_transport(SMALL, SmallTransport)
