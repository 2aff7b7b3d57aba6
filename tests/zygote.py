"""A fork server for the README test: `vitx` commands start from a process that has already
imported vitx, JAX and TensorFlow, so each command skips their ~12 s of imports.

`start(bin_dir, env)` starts the server (it imports everything once) and writes an executable
`bin_dir/vitx`: a shim that sends its argv, cwd, environment and stdin/stdout/stderr file
descriptors to the server over a Unix socket and exits with the command's exit status. For each
connection the server forks a child that takes the shim's descriptors, cwd and environment,
runs `vitx.cli.main()` on the argv, and reports the exit status. Put `bin_dir` first on PATH:
a command runs verbatim under bash (redirections, `&`, globs, `VAR=value` prefixes all as
typed), only the `vitx` it finds starts warm. Every command is still its own process, with its
own cwd, environment, descriptors and signal handlers; JAX and XLA read their environment when
the backend starts (after the fork), and the server never starts a backend.

The shim forwards SIGTERM/SIGINT to the child and the child exits when its shim goes away, so
killing the shim (even with SIGKILL) kills the command with SIGKILL. A command ends with
`os._exit` (no atexit handlers): not for `--distributed` runs whose exit status a test checks
(jax.distributed's exit handler must run; tests/train/test_multihost.py starts cold). The
`warm_vitx` fixture (tests/conftest.py) starts one per pytest worker; tests/test_readme.py
checks that a command run through it prints and exits as the installed `vitx` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

SHIM = r'''#!{python} -S
import array, json, os, signal, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect({sock!r})
msg = json.dumps(dict(argv=sys.argv[1:], cwd=os.getcwd(), env=dict(os.environ))).encode()
s.sendmsg([struct.pack("!I", len(msg)) + msg],
          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
buf = b""
while b"\n" not in buf:
    chunk = s.recv(64)
    if not chunk:
        sys.exit("vitx (test fork server): no reply from the server")
    buf += chunk
head, buf = buf.split(b"\n", 1)
pid = int(head)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda n, f: os.kill(pid, n))
while True:
    try:
        chunk = s.recv(64)
    except InterruptedError:
        continue
    if not chunk:
        break
    buf += chunk
sys.exit(int(buf) if buf.strip() else 1)
'''

SERVER = r'''
import array, json, os, signal, socket, struct, sys, threading
import vitx.cli, vitx.experiment, vitx.train.trainer, vitx.evaluators  # noqa: F401 (warm)
import tensorflow, jax  # noqa: F401
sock_path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX)
srv.bind(sock_path)
srv.listen(64)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
open(sock_path + ".ready", "w").close()


def recv_request(conn):
    fds = array.array("i")
    data, anc, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    size = struct.unpack("!I", data[:4])[0]
    body = data[4:]
    while len(body) < size:
        body += conn.recv(size - len(body))
    return json.loads(body), list(fds)


def child(conn, req, fds):
    srv.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    for name, value in req["env"].items():  # jax read JAX_* at import: apply the command's
        if name.startswith("JAX_") and hasattr(jax.config, name.lower()):
            current = getattr(jax.config, name.lower())
            if isinstance(current, bool):
                value = value.lower() in ("1", "true", "yes", "on")
            elif isinstance(current, int | float):
                value = type(current)(value)
            if current != value:
                jax.config.update(name.lower(), value)

    def watch():  # the shim is gone (killed): end the command as abruptly
        try:
            conn.recv(1)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, daemon=True).start()
    sys.argv = ["vitx", *req["argv"]]
    code = 1
    try:
        code = vitx.cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        conn.sendall(str(code or 0).encode())
        os._exit(code or 0)


while True:
    conn, _ = srv.accept()
    req, fds = recv_request(conn)
    pid = os.fork()
    if pid == 0:
        child(conn, req, fds)
    conn.sendall(f"{pid}\n".encode())
    conn.close()
    for fd in fds:
        os.close(fd)
'''


def start(bin_dir: str, env: dict[str, str], timeout: float = 300) -> subprocess.Popen:
    """Starts the server with `env` (less its JAX_* variables) and writes the shim
    `bin_dir/vitx` and `bin_dir/zygote.pid`; returns the server's process (terminate it when
    done). Raises RuntimeError if it is not ready in `timeout` s."""
    os.makedirs(bin_dir, exist_ok=True)
    sock = os.path.join(bin_dir, "zygote.sock")
    for stale in (sock, sock + ".ready"):
        if os.path.exists(stale):
            os.remove(stale)
    # No JAX_* in the server: jax reads them at import, so its config starts at the defaults and
    # each command applies its own (a command without JAX_COMPILATION_CACHE_DIR has none).
    env = {k: v for k, v in env.items() if not k.startswith("JAX_")}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, sock], env=env,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not os.path.exists(sock + ".ready"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the vitx fork server did not start (exit {proc.poll()})")
        time.sleep(0.1)
    with open(os.path.join(bin_dir, "zygote.pid"), "w") as f:
        f.write(str(proc.pid))
    shim = os.path.join(bin_dir, "vitx")
    with open(shim, "w") as f:
        f.write(SHIM.format(python=sys.executable, sock=sock))
    os.chmod(shim, 0o755)
    return proc


def wait_idle(bin_dir: str, timeout: float = 60) -> None:
    """Waits until no command forked by the server of `bin_dir` is alive (after killing a shim
    with SIGKILL its command follows within milliseconds; a real SIGKILL is instant). Raises
    TimeoutError after `timeout` s."""
    with open(os.path.join(bin_dir, "zygote.pid")) as f:
        server = f.read().strip()
    deadline = time.monotonic() + timeout
    while subprocess.run(["pgrep", "-P", server], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"commands of the vitx fork server {server} still alive")
        time.sleep(0.02)
