import sys

from conduit.testbed.cli import main

sys.exit(main())
