"""Container HEALTHCHECK: GET /health on the local server; exit 0 when it answers 200.

The slim image has no curl; this uses the standard library. Port: HR_PORT, else PORT, else 8080.
"""

import os
import sys
import urllib.request

port = os.environ.get("HR_PORT") or os.environ.get("PORT") or "8080"
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError:
    sys.exit(1)
