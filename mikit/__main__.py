"""`python -m mikit …`: the same as the `mikit` command."""

import sys

from mikit.cli import main

sys.exit(main())
