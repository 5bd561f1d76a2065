"""The job features: what queuekit adds above a broker, for every adapter alike.

The envelope (:mod:`.envelope`), delays (:mod:`.delays`), retry strategies (:mod:`.retry`),
hooks (:mod:`.hooks`), dedup keys (:mod:`.keys`), serial groups (:mod:`.groups`), recurring
jobs (:mod:`.schedules`), request/response (:mod:`.rpc`), the failed store (:mod:`.failed`),
bulk publishing (:mod:`.bulk`), and :class:`.broker.Broker`, through which every one of them
sends. They use the adapter SPI and the job store, and know nothing of workers or clients.
"""
