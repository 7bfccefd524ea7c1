"""What the worker processes' forkserver imports before it forks them.

Worker processes run nothing but ``connector.workers``. pyarrow imports numpy when it can, and
its first ``pa.array`` call imports pandas when that is installed, only to ask whether the
argument is a pandas object: about 0.3 s and 40 MB per process for something a worker never
uses. The forkserver keeps both out, then imports the worker code once, and every worker forked
from it starts with all of that already loaded and shared.
"""

from connector import lean

lean.keep_out("numpy", "pandas")

import connector.workers  # noqa: E402, F401
