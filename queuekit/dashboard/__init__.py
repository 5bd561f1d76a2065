"""The web dashboard (``worker dashboard``, extra ``queuekit[dashboard]``).

Queues with their counts, pause and a throughput chart; failed messages to inspect, retry
or delete; job records; workers alive and schedules. Starlette pages served by uvicorn,
rendered on the server: :mod:`.model` reads and acts, :mod:`.app` serves,
:mod:`.security` guards (bind, token, CSRF, read-only), :mod:`.chart` draws.
"""

from .app import create_app
from .model import Dashboard
from .security import Guard, UnsafeBind, check_bind

__all__ = ["Dashboard", "Guard", "UnsafeBind", "check_bind", "create_app"]
