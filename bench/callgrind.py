"""Instructions counted with valgrind's callgrind: what a process executes between two
moments, the same count for the same code whatever else the machine does. CPU seconds on a
shared machine move by a tenth to a quarter from run to run, more than most single steps
change; a count moves by less than 0.1%. About fifty times slower; valgrind must be
installed (Debian: valgrind)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

DUMP_WAIT = 60.0  # seconds a dump may take to be written (the process is slow under valgrind)


class Callgrind:
    """Processes run by callgrind, counting only while switched on (:meth:`start`,
    :meth:`stop`). ``control_env``: the environment their controller must run with: callgrind
    and its controller name the pipe between them after ``LOGNAME`` (or ``USER``) and
    ``HOST`` (or ``HOSTNAME``), each read from its own environment; None if the counted
    processes run with this one's."""

    def __init__(self, control_env: dict[str, str] | None = None) -> None:
        self.outputs: list[Path] = []
        self.env = control_env
        self._dumps = 0
        self.last_window: int | None = None

    def wrapper(self, workdir: Path) -> tuple[str, ...]:
        """The command prefix that runs one process (in ``workdir``) under callgrind."""
        self.outputs.append(workdir / "callgrind.out")
        return (
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={self.outputs[-1]}",
        )

    def start(self) -> None:
        self._control("--instr=on")

    def stop(self) -> None:
        self._control("--instr=off")

    def end_window(self) -> int:
        """Switch counting off, and return (and keep as ``last_window``) what was counted
        since the last window ended, summed over the processes."""
        self._control("--dump")
        self._control("--instr=off")
        self._dumps += 1
        self.last_window = sum(_totals(Path(f"{out}.{self._dumps}")) for out in self.outputs)
        return self.last_window

    def instructions(self) -> int:
        """What was counted, summed over the processes, read once they have ended."""
        return sum(_totals(output) for output in self.outputs)

    def keep(self, folder: Path) -> list[Path]:
        """Copy every output written so far (the final one and each window's dump) into
        ``folder``, for ``callgrind_annotate``; the copies, named by process and window."""
        folder.mkdir(parents=True, exist_ok=True)
        kept = []
        for number, output in enumerate(self.outputs):
            for written in sorted(output.parent.glob(output.name + "*")):
                copy = folder / f"process{number}.{written.name}"
                shutil.copyfile(written, copy)
                kept.append(copy)
        return kept

    def _control(self, what: str) -> None:
        # valgrind's launcher runs the tool as a child: find each by its output file.
        listed = subprocess.run(["vgdb", "-l"], capture_output=True, text=True)  # exits 1
        for output in self.outputs:
            (pid,) = [
                line.split()[1].removeprefix("--pid=")
                for line in listed.stdout.splitlines()
                if f"--callgrind-out-file={output} " in line
            ]
            done = subprocess.run(
                ["callgrind_control", what, pid],
                capture_output=True,
                text=True,
                env=self.env,
            )
            if done.returncode or "Error" in done.stdout + done.stderr:  # it exits 0 on errors
                raise RuntimeError(f"callgrind_control {what}: {done.stdout}{done.stderr}")


def _totals(output: Path) -> int:
    """The ``totals:`` line of a callgrind output ("summary:" counts only since the last
    switch), waiting for a dump still being written."""
    deadline = time.monotonic() + DUMP_WAIT
    while True:
        if output.exists():
            for line in output.read_text().splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
        if time.monotonic() > deadline:
            raise RuntimeError(f"no totals in {output}")
        time.sleep(0.05)
