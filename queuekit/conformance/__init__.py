"""The conformance suite: the transport contract turned into executable cases.

Run it against any broker by URL (``worker conformance URL``) or from an adapter's own CI
(``pytest --pyargs queuekit.conformance --queuekit-url URL``). It talks to the adapter only
through :class:`~queuekit.spi.transport.Transport` and queuekit's public API.
"""
