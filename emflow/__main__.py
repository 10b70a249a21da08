"""`python -m emflow` is the `emflow` command."""

import sys

from emflow.cli.main import main

sys.exit(main())
