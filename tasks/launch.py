"""Starting N local workers on the framework's own engine, and watching over them.

``dualkit train PRESET --workers N`` (tasks of ``Task.data_parallel``) starts N worker processes running the same
command, and waits:

- torch: ``python -m torch.distributed.run --standalone --nproc-per-node N -m dualkit ...`` (torchrun: gloo on CPU,
  NCCL on GPUs; its rendezvous gives each worker RANK, WORLD_SIZE and LOCAL_RANK);
- tf: N processes ``python -m dualkit ...``, each with a TF_CONFIG naming all of them on localhost ports
  (MultiWorkerMirroredStrategy).

On several hosts the framework's launcher starts the same command on each host (README, "Several hosts"); a
process that finds RANK/WORLD_SIZE (torch) or TF_CONFIG (tf) in its environment is a worker (:func:`is_worker`).

Each worker records, in a status folder the launcher gives it ($DUALKIT_DIST_DIR), its pid when it starts and
how it ended (exit code and one-line message); its console output goes to files there, and the launcher shows
rank 0's as it comes. What the launcher guarantees:

- a worker that dies (killed, out of memory) takes the run down: the others are stopped (SIGTERM, then SIGKILL
  after :data:`KILL_AFTER_S`) and the launcher says which worker died, within a bounded time, never a hang;
- SIGINT/SIGTERM to the launcher reach every worker once (they agree to stop after the same step, rank 0
  writes a checkpoint: tasks/loop.py); a second signal is passed on too (stop at once), a third kills them;
- every child is gone when the launcher returns (workers also die with their parent: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualkit.core import distributed, registry, runstate
from dualkit.core.errors import DualkitError, Interrupted
from dualkit.core.runs import require_run_dir
from dualkit.tasks.loop import engine_of

GRACE_S = 3.0  # after one worker fails, how long the others get to end by themselves before SIGTERM
KILL_AFTER_S = 10.0  # after SIGTERM, how long before SIGKILL
POLL_S = 0.1


def is_worker(backend: str | None) -> bool:
    """Whether this process is one worker of a distributed run of ``backend`` (its launcher set TF_CONFIG for tf,
    RANK/WORLD_SIZE for torch; None: either)."""
    env = os.environ
    tf = "TF_CONFIG" in env
    torch = (env.get("WORLD_SIZE") or "1").strip() not in ("", "1")
    return {"tf": tf, "torch": torch}.get(backend or "", tf or torch)


# -- in a worker ---------------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent (the launcher, or torchrun) dies, so none is left behind."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _status_dir() -> Path | None:
    raw = os.environ.get(distributed.STATUS_DIR_ENV)
    return Path(raw) if raw else None


def _record(rank: int, **fields: Any) -> None:
    folder = _status_dir()
    if folder is None:
        return
    path = folder / f"worker-{rank}.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    tmp = folder / f".worker-{rank}.json.tmp"
    tmp.write_text(json.dumps({**old, **fields}))
    os.replace(tmp, path)


def start_worker(backend: str, device: str, workers: int) -> distributed.World:
    """In a worker process: its world from the environment, checked against ``--workers``, its status recorded,
    the backend's engine started (before any other framework op: TensorFlow's collectives need it) and the world
    made current (core.distributed.activate)."""
    world = distributed.world_from_env(backend)
    if world.replicas != workers:
        raise DualkitError(
            f"--workers {workers}, but the launcher started {world.replicas} worker(s) (RANK/WORLD_SIZE or TF_CONFIG); "
            f"give --workers {world.replicas}"
        )
    _die_with_parent()
    folder = _status_dir()
    if folder is not None:  # console output to files the launcher shows (rank 0's) or keeps (for a failure)
        for fd, name in ((1, "out"), (2, "err")):
            sys.stdout.flush()
            sys.stderr.flush()
            out = os.open(folder / f"worker-{world.rank}.{name}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(out, fd)
            os.close(out)
    _record(world.rank, pid=os.getpid(), host=socket.gethostname(), started=time.time())
    registry.get_backend(backend, device)
    engine_of(backend).start(world, device)
    distributed.activate(world)
    return world


@contextlib.contextmanager
def worker_session(backend: str, world: distributed.World) -> Iterator[None]:
    """Around a worker's run: record how it ended. Rank 0 reports as a single-process run would; the other workers
    say nothing on the console (a failure they share, rank 0 reports; one of their own, the launcher does), and a
    framework error (a lost peer) is one line, not a traceback."""
    code, message = 0, ""
    try:
        yield
    except Interrupted as exc:
        code, message = exc.exit_code, str(exc)
        raise
    except DualkitError as exc:
        code, message = getattr(exc, "exit_code", 2), str(exc)
        if not world.writer:
            raise SystemExit(code) from None
        raise
    except KeyboardInterrupt:
        code, message = 130, "stopped at once by a second signal"
        raise
    except Exception as exc:  # e.g. a collective that lost its peer
        code = 1
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        message = f"{type(exc).__name__}: {first}"
        if registry.is_verbose():
            raise
        print(f"dualkit: worker {world.rank}: {message}", file=sys.stderr)
        raise SystemExit(code) from None
    finally:
        # the launcher may stop the workers as soon as one ends: finish recording first
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        _record(world.rank, code=code, message=message, ended=time.time())
        with contextlib.suppress(Exception):
            engine_of(backend).stop()
        distributed.activate(distributed.SINGLE)


# -- the launcher ----------------------------------------------------------------------------------------------
@dataclass
class WorkerEnd:
    """How one worker ended, as it recorded it (``code`` None: it recorded nothing, it was killed)."""

    rank: int
    pid: int | None = None
    code: int | None = None
    message: str = ""


@dataclass
class Launched:
    """The outcome of a launch: the exit code to return, the launcher's own message (empty when rank 0 has said
    what there is to say) and each worker's end."""

    code: int
    message: str
    workers: list[WorkerEnd] = field(default_factory=list)
    seconds: float = 0.0


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports free on localhost now (for TF_CONFIG)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("localhost", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def worker_commands(
    backend: str, workers: int, module_args: list[str], env: dict[str, str]
) -> list[tuple[list[str], dict[str, str]]]:
    """The processes to start, (argv, environment) each: one torchrun for torch, ``workers`` for tf."""
    py = sys.executable
    if backend == "torch":
        argv = [py, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", str(workers)]
        argv += ["--max-restarts", "0", "--monitor-interval", str(POLL_S), "-m", *module_args]
        return [(argv, env)]
    ports = free_ports(workers)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    out = []
    for i in range(workers):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        worker_env = {**env, "TF_CONFIG": config, "LOCAL_RANK": str(i)}
        if env.get("DUALKIT_DEVICE") == "gpu":
            worker_env["CUDA_VISIBLE_DEVICES"] = str(i)  # one GPU per worker
        out.append(([py, "-m", *module_args], worker_env))
    return out


class _Forward:
    """Rank 0's console output, copied from its files to ours as it comes."""

    def __init__(self, folder: Path) -> None:
        self.files = [(folder / "worker-0.out", sys.stdout), (folder / "worker-0.err", sys.stderr)]
        self.offsets = [0, 0]

    def pump(self) -> None:
        for i, (path, stream) in enumerate(self.files):
            try:
                with open(path, "rb") as fh:
                    fh.seek(self.offsets[i])
                    data = fh.read()
            except FileNotFoundError:
                continue
            if data:
                self.offsets[i] += len(data)
                stream.flush()
                stream.buffer.write(data) if hasattr(stream, "buffer") else stream.write(data.decode(errors="replace"))
                stream.flush()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ours(pid: int, folder: Path) -> bool:
    """Whether ``pid`` is a worker of the launch whose status folder is ``folder`` (Linux: by its environment;
    elsewhere: whether it runs)."""
    if not Path("/proc/self/environ").exists():
        return _alive(pid)
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return _alive(pid)
    return f"{distributed.STATUS_DIR_ENV}={folder}".encode() in env.split(b"\0")


def _signal_all(procs: list[subprocess.Popen], pids: list[int], sig: int) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
    if sig == signal.SIGKILL:  # torchrun's workers run in sessions of their own: reach them by pid
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def read_ends(folder: Path, workers: int) -> list[WorkerEnd]:
    ends = []
    for rank in range(workers):
        path = folder / f"worker-{rank}.json"
        try:
            info = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            info = {}
        ends.append(WorkerEnd(rank, info.get("pid"), info.get("code"), info.get("message", "")))
    return ends


def launch(
    backend: str,
    workers: int,
    module_args: list[str],
    *,
    device: str = "cpu",
    run_dir: Path | None = None,
    resume_hint: str = "",
    timeout_s: float | None = None,
    echo: bool = True,
    threads: int | None = None,
) -> Launched:
    """Start ``workers`` local workers of ``python -m <module_args>`` on ``backend``'s engine and wait for them.

    ``run_dir`` and ``resume_hint`` (the command that continues the run) word the message after a failure;
    ``timeout_s`` ends the run (every worker killed) after that long; ``echo`` shows rank 0's console output;
    ``threads`` per worker (default: this process's thread count shared out, at least one each).
    Returns rank 0's exit code, or 1 with a message when a worker died, 124 on the timeout."""
    threads = threads or max(1, registry.thread_count() // workers)
    folder = Path(tempfile.mkdtemp(prefix="dualkit-workers-"))
    env = {
        **os.environ,
        distributed.STATUS_DIR_ENV: str(folder),
        "DUALKIT_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),  # (also keeps torchrun's note about it quiet)
        "DUALKIT_DEVICE": device,
    }
    for var in ("TF_CONFIG", "RANK", "WORLD_SIZE", "LOCAL_RANK"):  # a launcher's children get only their own
        env.pop(var, None)
    procs: list[subprocess.Popen] = []
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:  # stop after the step, with a checkpoint (torchrun passes it on to its workers)
            _signal_all(procs, [], signum)
        elif len(received) == 2:  # stop at once: to the workers themselves (torchrun is shutting down)
            for pid in worker_pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)
        else:
            _signal_all(procs, worker_pids(), signal.SIGKILL)

    def worker_pids() -> list[int]:
        """The workers still running (no end recorded), by pid: only processes of this launch (a pid can be
        reused once its worker is gone)."""
        return [e.pid for e in read_ends(folder, workers) if e.pid and e.code is None and _ours(e.pid, folder)]

    previous = {}
    if threading_main():
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.perf_counter()
    forward = _Forward(folder) if echo else None
    timed_out = False
    try:
        for argv, proc_env in worker_commands(backend, workers, module_args, env):
            log = open(folder / f"launch-{len(procs)}.log", "wb")  # what a process says before its worker starts
            procs.append(
                subprocess.Popen(argv, env=proc_env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
            )
            log.close()
        failed_at = term_at = None
        while any(p.poll() is None for p in procs):
            if forward:
                forward.pump()
            now = time.perf_counter()
            if timeout_s is not None and now - t0 > timeout_s and term_at is None:
                timed_out, term_at = True, now
                _signal_all(procs, [], signal.SIGTERM)
            ends = read_ends(folder, workers)
            died = [e for e in ends if e.pid and e.code is None and not _alive(e.pid)]
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed_at is None and (died or failed):
                # a worker that died cannot be waited for (its peers hang in their next collective): stop the rest now;
                # one that failed with an error: the others get GRACE_S to end by themselves (the same error)
                killed = died or any(p.returncode < 0 for p in failed)
                failed_at = now - (GRACE_S if killed else 0.0)
            if failed_at is not None and term_at is None and now - failed_at >= GRACE_S:
                term_at = now
                _signal_all(procs, [], signal.SIGTERM)
            if term_at is not None and now - term_at > KILL_AFTER_S:
                _signal_all(procs, worker_pids(), signal.SIGKILL)
            time.sleep(POLL_S)
        if forward:
            forward.pump()
    finally:
        _signal_all(procs, worker_pids(), signal.SIGKILL)  # nothing outlives the launcher
        for p in procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=KILL_AFTER_S)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    ends = read_ends(folder, workers)
    seconds = time.perf_counter() - t0
    outcome = _outcome(backend, ends, procs, folder, run_dir, resume_hint, timed_out, timeout_s, received)
    outcome.seconds = seconds
    if outcome.code == 0 or not os.environ.get("DUALKIT_KEEP_WORKER_LOGS"):
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    return outcome


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


_ERROR_LINE = re.compile(r"dualkit: error: |.*No module named |[\w.]+(Error|Exception): ")


def _said(log: Path) -> str:
    """What a process that never started its worker said: its first error (dualkit's own line, Python's, or an
    exception's; torchrun's report of the failure follows it), else its last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip(" =-")]
    except OSError:
        return ""
    errors = [line for line in lines if _ERROR_LINE.match(line)]
    return (errors[:1] or lines[-1:] or [""])[0][:300]


def _last_line(folder: Path, rank: int) -> str:
    try:
        lines = (folder / f"worker-{rank}.err").read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def _outcome(
    backend: str,
    ends: list[WorkerEnd],
    procs: list[subprocess.Popen],
    folder: Path,
    run_dir: Path | None,
    resume_hint: str,
    timed_out: bool,
    timeout_s: float | None,
    received: list[int],
) -> Launched:
    n = len(ends)
    where = ""
    if run_dir is not None and Path(run_dir).is_dir() and runstate.list_checkpoints(Path(run_dir)):
        step, path = runstate.list_checkpoints(Path(run_dir))[-1]
        where = f"; the run's last checkpoint is {path} (step {step})" + (
            f"; continue with: {resume_hint}" if resume_hint else ""
        )
    if timed_out:
        return Launched(124, f"the {n} workers did not finish within {timeout_s:.0f} s and were stopped{where}", ends)
    dead = [e for e in ends if e.code is None]
    rank0 = ends[0]
    if not dead and rank0.code is not None:
        # every worker said how it ended: rank 0 has reported (the others' failures it shares, or it names them)
        others = [e for e in ends[1:] if e.code not in (0, None) and e.message and e.message != rank0.message]
        message = ""
        if rank0.code == 0 and others:
            message = f"worker {others[0].rank} of {n} failed: {others[0].message}"
        elif rank0.code not in (0, None) and others and not rank0.message:
            message = f"worker {others[0].rank} of {n} failed: {others[0].message}"
        return Launched(rank0.code, message, ends)
    if dead:
        first = dead[0]
        if first.pid is None:
            # never started its worker: what its process said (an import error, the launcher's own refusal)
            proc = procs[0] if backend == "torch" else procs[first.rank]
            detail = _said(folder / f"launch-{procs.index(proc)}.log") or f"exit code {proc.returncode}"
            return Launched(1, f"worker {first.rank} of {n} did not start: {detail}{where}", ends)
        how = ""
        if backend == "tf" and procs[first.rank].returncode is not None and procs[first.rank].returncode < 0:
            how = f" (killed by {signal.Signals(-procs[first.rank].returncode).name})"
        else:
            how = " (killed by a signal, e.g. SIGKILL or the out-of-memory killer)"
        last = _last_line(folder, first.rank)
        return Launched(
            1,
            f"worker {first.rank} of {n} (pid {first.pid}) died without finishing{how}"
            + (f", after: {last}" if last and not last.startswith("\r") else "")
            + f"; the other workers were stopped{where}",
            ends,
        )
    return Launched(rank0.code or 1, f"worker 0 of {n}: {rank0.message}{where}", ends)


# -- the command line's part -------------------------------------------------------------------------------------
def resume_backend(run_dir: Path, backend: str | None) -> str:
    """The backend a resume runs in: the one named, else the one that wrote the run's newest checkpoint."""
    return registry.resolve_name(backend) if backend else runstate.latest(require_run_dir(Path(run_dir))).backend


def cli_launch(args: Any, backend: str, run_dir: Path) -> int:
    """``dualkit train|pretrain ... --workers N`` (N > 1) where no launcher started this process: start the N
    workers with the same command and wait for them; returns the exit code (rank 0's, or the launcher's own after
    a worker died, said on stderr)."""
    module_args = ["dualkit", args.command]
    if args.preset:
        module_args.append(args.preset)
    module_args += ["--backend", backend, "--device", args.device, "--workers", str(args.workers)]
    for item in args.overrides:
        module_args += ["--set", item]
    if getattr(args, "resume", None):
        module_args += ["--resume", str(run_dir)]
    else:
        module_args += ["--out", str(run_dir)]
        if args.overwrite:
            module_args.append("--overwrite")
        if getattr(args, "init_from", None):
            module_args += ["--init-from", args.init_from]
    if args.quiet:
        module_args.append("--quiet")
    hint = f"dualkit train --resume {run_dir} --workers {args.workers}"
    out = launch(backend, args.workers, module_args, device=args.device, run_dir=run_dir, resume_hint=hint)
    if out.message:
        print(f"dualkit: error: {out.message}", file=sys.stderr)
    return out.code


@contextlib.contextmanager
def cli_session(backend: str | None, device: str, workers: int) -> Iterator[distributed.World]:
    """Around one process's run of ``dualkit train|pretrain``: in a worker, its engine started and its end
    recorded (:func:`start_worker`, :func:`worker_session`); else the single-process world."""
    if backend is None or not is_worker(backend):
        yield distributed.SINGLE
        return
    world = start_worker(backend, device, workers)
    with worker_session(backend, world):
        yield world
