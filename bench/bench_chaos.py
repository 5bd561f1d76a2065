"""The chaos bench under the name ``scripts/bench-smoke`` runs: ``bench/chaos.py``.

``bench_chaos.py --quick`` (no URL) is the smoke run on a fresh SQLite file; any other
arguments are chaos.py's (``bench_chaos.py URL --broker NAME`` is the same as
``chaos.py URL --broker NAME``).
"""

from chaos import main

if __name__ == "__main__":
    main()
