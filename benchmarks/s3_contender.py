"""One S3 contender in a fresh process, so that no contender inherits another's heap.

python -m benchmarks.s3_contender NAME PAGES.pickle OUT_DIR    prints the seconds it took
"""

from __future__ import annotations

import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import scenarios


def main() -> None:
    name, pages_file, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    if name.startswith("ours"):
        # As the oci-images executable does (connector.cli.entry, and without worker processes
        # connector.cli._execute), before pyarrow is imported.
        from connector import lean

        lean.own_process()
        lean.fixed_mmap_threshold()
        if name == "ours, one thread":
            lean.parsing_heap()
    from connector import logs

    logs.configure("warning", "json")
    pages = pickle.loads(pages_file.read_bytes())
    contenders: dict[str, Callable[[], float | None]] = {
        "ours": lambda: scenarios._ours(pages, out, workers="auto"),
        "ours, one thread": lambda: scenarios._ours(pages, out, workers=0),
        "pandas": lambda: scenarios._pandas(pages, out),
        "sdk": lambda: scenarios._sdk_models(pages, out),
    }
    started = time.perf_counter()
    seconds = contenders[name]()
    print(seconds if seconds is not None else time.perf_counter() - started)


if __name__ == "__main__":
    main()
