"""The output lines of a running command, read with deadlines.

`flux job attach JOBID` streams a job's output until the job ends; the
demo, the bench and the test harness read it line by line with a
`LineReader`, without ever waiting past a deadline.  Standard library only.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path


class LineReader:
    """The stdout lines of `argv` (e.g. `flux job attach ID`), as they come."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self._stderr.extend(self.proc.stderr)

    def next(self, deadline: float) -> str | None:
        """The next line, None at the end.

        Raises:
            TimeoutError: no line before `deadline` (time.monotonic()).
        """
        try:
            line = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            raise TimeoutError(f"`{' '.join(self.argv)}` printed nothing more in time") from None
        if line is not None:
            self.lines.append(line)
        return line

    def follow(self, deadline: float) -> Iterator[str]:
        """Each line until the end (TimeoutError at the deadline)."""
        while (line := self.next(deadline)) is not None:
            yield line

    def until(self, want: Callable[[str], bool], timeout: float) -> str:
        """Read up to the first line for which want(line) holds."""
        for line in self.follow(time.monotonic() + timeout):
            if want(line):
                return line
        raise EOFError(f"`{' '.join(self.argv)}` ended first: {self.lines}\n{self.stderr()}")

    def finish(self, timeout: float) -> int:
        """Read to the end; the exit status."""
        deadline = time.monotonic() + timeout
        for _ in self.follow(deadline):
            pass
        return self.proc.wait(timeout=max(deadline - time.monotonic(), 1))

    def stderr(self) -> str:
        """What it printed on stderr (all of it, once it has ended)."""
        if self.proc.poll() is not None:
            self._readers[1].join(timeout=5)
        return "".join(self._stderr)

    def close(self) -> None:
        """End the command if it still runs, and let go of its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        # a pipe that a child of the command still holds open is left to it
        for reader, pipe in zip(self._readers, (self.proc.stdout, self.proc.stderr)):
            reader.join(timeout=1)
            if pipe is not None and not reader.is_alive():
                pipe.close()

    def __enter__(self) -> LineReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
