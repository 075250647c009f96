"""`layercut ARGV` in a process of its own, without paying the start-up each time.

The console script is `sys.exit(layercut.cli:main())`. Here that code runs in a child forked from
a multiprocessing fork server that imported torch, transformers, pandas and layercut's stages once
(~2.5 s of every real start-up; a refused command then takes a fraction of a second). The child
is a real process: its stdout and stderr are files read back whole, its exit code is the process's,
and the environment and working folder are the caller's. The interpreter's own start-up and the
generated script are covered by the tests that still run the installed executable (usage errors,
--help, Ctrl-C, SIGKILL).

Nothing that reads the environment at import is preloaded: `layercut.cli` (its rich consoles take
COLUMNS when built) imports in each child.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping

PRELOAD = ["torch", "transformers", "transformers.activations", "pandas", "typer", "rich.table", "layercut.api", "layercut.sweep"]
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)


def _child(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """Become `layercut ARGV`: the caller's environment and folder, stdout and stderr to files."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    if env.get("OMP_NUM_THREADS"):  # read by torch at import, which the server did before
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    sys.argv = ["layercut", *argv]
    from layercut.cli import main

    sys.exit(main())  # multiprocessing exits with an int code, or prints any other and exits 1


def run(argv: list, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Like `subprocess.run([layercut, *argv], capture_output=True, text=True)`."""
    argv = [str(a) for a in argv]
    with tempfile.TemporaryDirectory(prefix="forkcli-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        proc = _context.Process(target=_child, args=(argv, dict(env or os.environ), str(cwd or os.getcwd()), out, err))
        proc.start()
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(["layercut", *argv], timeout)
        return subprocess.CompletedProcess(["layercut", *argv], proc.exitcode,
                                           Path(out).read_text(), Path(err).read_text())
