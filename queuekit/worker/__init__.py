"""The worker runtime: the dispatch loop (:mod:`.loop`) around the one processing pipeline
(:mod:`.pipeline`), and the observers that act around each message (:mod:`.observers`)."""
