"""The application's API: connections (:mod:`.connection`, configured by :mod:`.config`),
queues and topics (:mod:`.queue`), ``AbstractQueue`` (:mod:`.abstract`), the fluent form
(:mod:`.fluent`) and the event-manager bridge (:mod:`.events`). ``queuekit`` re-exports it.
:mod:`.progress` shows how far a long command got (the ``worker`` CLI and conformance)."""
