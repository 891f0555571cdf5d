"""``python -m tests.bench [a b c d]``."""

import sys

from tests.bench.run import main

sys.exit(main(sys.argv[1:]))
