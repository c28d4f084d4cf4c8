"""`python -m wodmail.cli` is the `wodmail` command too."""

import sys

from wodmail.cli import main

sys.exit(main())
