import sys

from blk.cli import main

sys.exit(main())
