"""``amqp://`` and ``amqps://``: RabbitMQ (AMQP 0-9-1) through kombu and py-amqp.

See docs/amqp.md for what is declared, the URL options and what is lost when.
"""

from .transport import AMQPTransport

__all__ = ["AMQPTransport"]
