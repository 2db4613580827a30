"""`python -m bench [--smoke] [--json PATH]`."""

from bench.harness import main

raise SystemExit(main())
