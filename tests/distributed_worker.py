"""`unlearn-fast` as torchrun runs it, for tests/engine/test_distributed.py, with one optional fault: a rank that dies.

    torchrun --nproc-per-node 2 tests/distributed_worker.py prepare --data ... --work-dir ...

With KILL_RANK=r, KILL_PASS=name and KILL_AFTER=k in the environment, rank r exits at once (os._exit, no cleanup, as a
killed process would) right after writing its k-th chunk of the pass `name`; torchrun then stops the other ranks.
"""
import os
import sys

from unlearn_fast.cli import main
from unlearn_fast.store.chunked import ChunkedArray

if os.environ.get("KILL_RANK") == os.environ.get("RANK", "0"):
    write_chunk, written = ChunkedArray.write_chunk, []

    def write_then_die(self, start, stop, values):
        write_chunk(self, start, stop, values)
        if self.name == os.environ["KILL_PASS"]:
            written.append(start)
            if len(written) >= int(os.environ["KILL_AFTER"]):
                os._exit(17)
    ChunkedArray.write_chunk = write_then_die

main(sys.argv[1:])
