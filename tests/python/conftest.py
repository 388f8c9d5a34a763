from __future__ import annotations

import os

# Tests must be reproducible and fit a 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
