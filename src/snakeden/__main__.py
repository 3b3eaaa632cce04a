import sys

from snakeden._cli import main

sys.exit(main())
