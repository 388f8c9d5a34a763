import sys

from arrowquant.cli import main

sys.exit(main())
