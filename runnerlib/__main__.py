import sys

from runnerlib.cli import main

sys.exit(main())
