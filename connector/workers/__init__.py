"""Page workers: the CPU side of a run, on as many cores as the machine has.

A worker owns the listings it is given. It parses and converts their pages (``normalize``),
drops ids a listing repeats, sets platform images aside, and writes rows and rejects into its
own files under the run's staging directory. All pages of a listing go to the same worker, in
order, so everything per listing happens in one place; the event loop only hands pages over
and collects a small result at the end of each listing.

Workers run either in this process, one thread (``fetch.workers = 0``), or as processes
(started by ``spawn``) fed over socket pairs. Parsing JSON and building Arrow arrays
hold the GIL; in their own processes they use the other cores, and the event loop keeps its
core for fetching. Only pages go out and only listing results and file lists come back, so the
hand-over costs little. A busy worker stops reading its socket, the sends wait, and so, through
the pipeline's bounded stream, do the fetch tasks: backpressure, whichever way workers run.

- ``page``: the ``PageWorker`` (synchronous: it converts and writes a listing's pages);
- ``coordinator``: the event loop's side (``Workers``: a thread, or processes over sockets);
- ``protocol``: the typed messages between the coordinator and a worker process, and framing;
- ``spawn`` and ``boot``: starting the processes (``python -m connector.workers.boot``).

This package imports nothing on its own, so that the boot program can keep numpy and pandas
out of the worker processes before pyarrow is imported.
"""
