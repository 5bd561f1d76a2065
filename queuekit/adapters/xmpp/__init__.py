"""XMPP publish-subscribe (XEP-0060) transport over slixmpp; see docs/xmpp.md."""

from ...spi.errors import QueueFull
from .settings import XMPPSettings
from .transport import XMPPTransport

__all__ = ["QueueFull", "XMPPSettings", "XMPPTransport"]
