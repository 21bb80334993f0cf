"""`python -m actstore ...`: the `actstore` command."""

import sys

from actstore.cli import main

sys.exit(main())
