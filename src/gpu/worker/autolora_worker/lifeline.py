"""`--exit-with-stdin`: a process started by the host ends when the host does, however the host ended.

The host keeps the write end of our stdin open and never writes to it. When the host exits — even by SIGKILL,
which leaves it no chance to stop its children — the kernel closes that end and our read sees end-of-file. A
parent-pid check would need polling and is fooled by pid reuse; the pipe needs neither. Opt-in, because a worker
started by hand or under nohup has a stdin that closes (or never opens) for reasons that say nothing about a host.
"""

from __future__ import annotations

import os
import sys
import threading

STDIN = 0


def exit_when_stdin_closes(name: str) -> threading.Thread:
    """Watch stdin on a daemon thread and end the process at once when it reaches end-of-file. Nothing is left to
    save by then: whoever asked for this process's work is gone, and a job half done has nobody to answer."""

    def watch() -> None:
        try:
            while os.read(STDIN, 4096):
                pass  # the host writes nothing; anything written is not ours to read
        except OSError:
            pass  # a stdin that cannot be read is as gone as a closed one
        try:
            print(f"{name}: stdin closed, so the process that started it is gone (--exit-with-stdin); exiting",
                  file=sys.stderr, flush=True)
        except OSError:
            pass  # stderr was a pipe to the same dead host: the line has no reader, and the exit must still happen
        finally:
            os._exit(0)

    watcher = threading.Thread(target=watch, name="exit-with-stdin", daemon=True)
    watcher.start()
    return watcher
