import sys

from fastbn.cli import main

sys.exit(main())
