"""Order tracking with a process manager (Printify's "Beyond cronjobs" story): an order
sent to production is followed until it ships, is declined or is canceled; a check of the
partner's state that finds no change schedules the next one. A device health check
re-schedules itself, exactly once each time."""
