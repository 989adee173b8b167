"""The CLI in a forked process: `detcli.cli.main(args)` in a child of a multiprocessing fork server that has
imported torch, torchvision, timm and detcli once. A fresh `python -m detcli` spends ~3 s of CPU on those
imports, half of the suite's time; the child still has its own process, environment, working folder,
standard streams and exit status, as a subprocess would. No side effects on import: the child imports it."""

import multiprocessing
import os
import subprocess
import tempfile
from pathlib import Path

# what the fork server imports before it forks a CLI process (the modules every verb needs)
PRELOAD = ["torch", "torchvision", "timm", "hydra", "rich", "detcli.cli", "detcli.build", "detcli.tasks.train"]


def _child(args: list[str], env: dict[str, str], cwd: str | None, out: str, err: str) -> None:
    """The forked process: the environment, working folder and standard streams a subprocess would have,
    then the console entry point; its return value or SystemExit is the exit status."""
    import warnings

    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    warnings.resetwarnings()
    warnings.simplefilter("ignore")  # PYTHONWARNINGS=ignore, which only a new interpreter reads
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    from detcli.cli import main

    raise SystemExit(main(args))


def forked_cli(args: list[str], env: dict[str, str], cwd: Path | None, timeout: float) -> subprocess.CompletedProcess:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = f"{tmp}/stdout", f"{tmp}/stderr"
        child = ctx.Process(target=_child, args=(args, env, None if cwd is None else str(cwd), out, err))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["detcli", *args], timeout)
        read = lambda path: Path(path).read_text(errors="replace")
        return subprocess.CompletedProcess(["detcli", *args], child.exitcode, read(out), read(err))
