"""queuekit's core: envelope, transport contract, policies and the dispatch loop.

It imports no broker client library; adapters in :mod:`queuekit.adapters` do.
"""
