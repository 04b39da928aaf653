"""Entry point of `python -m benchmarks`; guarded because spawned children re-import it."""

import sys

if __name__ == "__main__":
    from .suite import main

    sys.exit(main())
