"""Job store backends: the contract they keep is :mod:`queuekit.core.jobstore`.

- :mod:`queuekit.jobstores.sqlite`: an SQLite file (the default; the standard library only);
- :mod:`queuekit.jobstores.sql`: PostgreSQL or MySQL/MariaDB through SQLAlchemy Core (extra
  ``queuekit[sql]``), for workers on many hosts.

:func:`queuekit.core.jobstore.open_jobstore` picks one by URL, as the registry picks a
transport adapter, so the core never imports a database client library itself.
"""
