"""`python -m wodmail` is the `wodmail` command."""

import sys

from wodmail.cli import main

sys.exit(main())
