"""``stomp://`` transport (stomp.py): RabbitMQ's STOMP plugin, ActiveMQ 5, other servers.

See :mod:`.transport` for the contract as STOMP delivers it, :mod:`.servers` for what each
server does natively, and docs/stomp.md for guarantees and URL options.
"""

from .transport import StompTransport

__all__ = ["StompTransport"]
