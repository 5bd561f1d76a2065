"""A module that fails on import: ``worker run tests.workers.unimportable:AnyQueue`` dies
before it consumes anything, every time (the supervisor's crash-loop test)."""

raise RuntimeError("this module fails to import, on purpose")
