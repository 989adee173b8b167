"""SIGTERM / SIGINT: the first one asks the loop to finish its step, save and exit (143 / 130); a
second one exits at once. Saves are atomic, so an exit at any moment leaves no partial checkpoint.

SLURM, systemd, `kill -TERM -PGID` and Ctrl+C signal every process of the job, DataLoader workers
included: `detcli.data.workers.WorkerSignals` (the loaders' worker_init_fn) leaves those signals to the
main process."""

from __future__ import annotations

import os
import signal
import sys
import threading

from detcli import checkpoint

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class StopRequest:
    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 1)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second signal: leave now, removing a save in progress
            checkpoint.remove_partial()
            print(f"\n{signal.Signals(signum).name} again: exiting without saving", file=sys.stderr, flush=True)
            os._exit(EXIT_CODES.get(signum, 1))
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving checkpoints/last.pt "
              f"(send it again to exit at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
