import sys

from snakeden.conformance import main

sys.exit(main())
