"""``zmq://``: ZeroMQ through pyzmq, at most once, with a routing device in between.

See :mod:`.transport` for the contract as ZeroMQ delivers it, :mod:`.proxy` for the device
(``worker zmq-proxy URL``), :mod:`.wire` for the frames between them, and docs/zmq.md for
guarantees and URL options.
"""

from .transport import ZeroMQTransport

__all__ = ["ZeroMQTransport"]
