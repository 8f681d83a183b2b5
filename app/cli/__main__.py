"""`python -m app.cli`: the `fitserve` command."""

import sys

from app.cli.root import main

sys.exit(main())
