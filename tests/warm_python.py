"""A warm Python for the stage processes the tests start.

Every end-to-end test runs the stage scripts as processes, as a user would, and ~3 s of each such process is
importing torch, torchvision and torch._dynamo (which torch's optimizers import on first use). The server here
imports those once and forks a fresh child per request; the child takes the caller's stdin/stdout/stderr (passed
over a Unix socket), argv, working folder and environment, runs the script as `__main__`, and its exit status
comes back to the caller, which exits with it (or dies of the same signal). The project's own modules are never
imported before the fork, so each run imports them from the tree as a fresh process would; only third-party
modules are warm. No tensor op runs in the server (an OpenMP pool must not exist before a fork), and the child
sets the thread count from OMP_NUM_THREADS as a fresh torch would.

    python tests/warm_python.py serve SOCKET      # the server (tests/conftest.py starts one per test process)
    python tests/warm_python.py client SOCKET script.py [args...]   # what `run_script` / a study's $PY runs

A request that is not `script.py ...` (`-c`, `-m`, no socket) runs in the real interpreter instead, so the
client can stand in for `python` anywhere.
"""
import atexit
import importlib
import importlib.machinery
import io
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import traceback
import types

_HEADER = struct.Struct("!Q")
_STATUS = struct.Struct("!i")
# third-party modules the stages import; importing them is what a fresh process pays for
WARM_MODULES = ("numpy", "torch", "torch.nn.functional", "torch.optim", "torch._dynamo", "torch.distributed",
                "torchvision", "torchvision.transforms", "torch_pruning", "safetensors.torch", "tqdm", "PIL.Image",
                "matplotlib", "matplotlib.pyplot")


def _recv_exactly(conn, n):
    chunks = []
    while n:
        chunk = conn.recv(min(n, 1 << 16))
        if not chunk:
            raise ConnectionError("client closed the connection mid-request")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


# ---- client ----------------------------------------------------------------------------------------------------

def _become_plain_python(argv):
    os.execv(sys.executable, [sys.executable, *argv])


def client(sock_path, argv):
    if not argv or argv[0].startswith("-") or not os.path.exists(sock_path):
        _become_plain_python(argv)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(sock_path)
    except OSError:  # the server is gone: a cold process does the same job
        _become_plain_python(argv)
    umask = os.umask(0o022)
    os.umask(umask)
    payload = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask}).encode()
    socket.send_fds(conn, [_HEADER.pack(len(payload))], [0, 1, 2])
    conn.sendall(payload)
    # a signal to this process reaches the run: the server kills the child when this end closes
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: os._exit(128 + signum))
    try:
        status = _STATUS.unpack(_recv_exactly(conn, _STATUS.size))[0]
    except ConnectionError:
        print("warm_python: the server died before the run finished", file=sys.stderr)
        os._exit(1)
    if status < 0:  # died of a signal: so does this process, for the caller to see
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status)


# ---- server ----------------------------------------------------------------------------------------------------

def serve(sock_path):
    base_path = [p for p in sys.path[1:] if p not in os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    os.environ.setdefault("MPLBACKEND", "Agg")  # what utils/plots.py selects; a display-less server
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the per-request handlers reap themselves
    print("ready", flush=True)
    parent = os.getppid()
    server.settimeout(2.0)
    while True:
        try:
            conn, _ = server.accept()
        except socket.timeout:  # a test process killed outright leaves no server behind
            if os.getppid() != parent:
                os._exit(0)
            continue
        conn.settimeout(None)
        if os.fork() == 0:
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                _handle(conn, base_path)
            finally:
                os._exit(0)
        conn.close()


def _handle(conn, base_path):
    """Fork the run, wait for it (or for the client to go away, then kill it), send back its exit status."""
    header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
    request = json.loads(_recv_exactly(conn, _HEADER.unpack(header)[0]))
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run(request, fds, base_path)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(conn, select.POLLIN | select.POLLHUP)
    while pidfd not in dict(poller.poll()):
        try:  # the client sends nothing more: readable means it hung up (killed, timed out)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        poller.unregister(conn)
    _, status = os.waitpid(pid, 0)
    try:
        conn.sendall(_STATUS.pack(os.waitstatus_to_exitcode(status)))
    except OSError:
        pass


def _run(request, fds, base_path):
    """The child: become `python script.py args` in the caller's folder and environment; never returns."""
    os.setpgid(0, 0)  # its own group, so that a run's own children go down with it
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = io.TextIOWrapper(io.open(0, "rb", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.open(1, "wb", closefd=False), encoding="utf-8", line_buffering=os.isatty(1),
                                  write_through=unbuffered)
    sys.stderr = io.TextIOWrapper(io.open(2, "wb", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True)
    sys.argv = list(request["argv"])
    # what the interpreter does for `python path/script.py`: __file__ joined to the folder, not normalised;
    # sys.path[0] the script's real folder; argv as typed
    script = sys.argv[0] if os.path.isabs(sys.argv[0]) else os.path.join(os.getcwd(), sys.argv[0])
    python_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [os.path.dirname(os.path.realpath(script)), *python_path, *base_path]
    if "torch" in sys.modules and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    main = types.ModuleType("__main__")
    main.__file__, main.__cached__, main.__spec__ = script, None, None
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", script)
    sys.modules["__main__"] = main
    code = 0
    try:
        with open(script, "rb") as f:
            source = f.read()
        exec(compile(source, script, "exec"), main.__dict__)
    except SystemExit as exc:  # the interpreter's rules for exit(x)
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "client":
        client(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
