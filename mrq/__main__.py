"""``python -m mrq``: the same command line as the ``mrq`` console script."""
import sys

from mrq.entry import main

sys.exit(main())
