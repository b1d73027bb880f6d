import sys

from dsbs.cli import main

sys.exit(main())
