"""Start and stop the systems under test as real processes on loopback ports.

Every system runs as its own process, optionally pinned to its own CPU with ``taskset`` so the
load generator does not compete with it. A system that cannot run raises ``Unavailable`` with
the reason, which the report shows as "skipped".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 20.0
APT_PACKAGES = {"nginx": "nginx", "varnishd": "varnish", "wrk": "wrk"}


class Unavailable(Exception):
    """A system cannot run on this machine; the message says why."""


@dataclass(frozen=True)
class Pinning:
    """Which CPUs the servers and the load generators may use (``None``: no pinning)."""

    server: str | None = None
    client: str | None = None

    @classmethod
    def choose(cls, enabled: bool) -> Pinning:
        """Servers on CPU 0 and load generators on the last CPU, when there are at least two."""
        if not enabled or shutil.which("taskset") is None:
            return cls()
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls()
        return cls(server=str(cpus[0]), client=str(cpus[-1]))

    def wrap(self, command: Sequence[str], *, client: bool = False) -> list[str]:
        cpus = self.client if client else self.server
        return ["taskset", "-c", cpus, *command] if cpus is not None else list(command)

    def describe(self) -> str:
        if self.server is None:
            return "not pinned"
        return f"servers pinned to CPU {self.server}, load generators to CPU {self.client}"


class Server(Protocol):
    """What a benchmark needs of a running system: where it answers, its CPU time, and stopping
    it (a ``Service`` below, or the container of ``bench.container``)."""

    name: str

    @property
    def url(self) -> str: ...

    def cpu_seconds(self) -> float:
        """User plus system CPU time the system has consumed so far."""
        ...

    def stop(self) -> None: ...


@dataclass
class Service:
    """One running system: its process, where it listens, and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """CPU time of the process and its descendants (nginx workers, the Varnish child)."""
        return cpu_seconds(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ten seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def python_env() -> dict[str, str]:
    """The environment for Python children: this checkout first on the import path."""
    env = dict(os.environ)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + existing if existing else "")
    env.pop("PYTHONASYNCIODEBUG", None)
    return env


def ensure_binary(name: str, *, install: bool) -> str:
    """The path of ``name``, installed from Debian's packages first if missing and allowed."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found:
        return found
    package = APT_PACKAGES.get(name, name)
    if not install:
        raise Unavailable(f"{name} is not installed (apt-get install -y {package})")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(f"{name} is not installed and apt-get is not usable here")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (
        ["apt-get", "install", "-y", "-qq", package],
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", package],
    ):
        result = subprocess.run(command, env=env, capture_output=True, check=False)
        if result.returncode == 0 and command[1] == "install":
            break
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        raise Unavailable(f"{name}: apt-get install -y {package} failed")
    return found


def wait_ready(service: Service, path: str, timeout: float = READY_TIMEOUT) -> None:
    """Poll ``path`` until the service answers over HTTP; raise ``Unavailable`` if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise Unavailable(
                f"{service.name} exited with status {service.process.returncode}: "
                f"{service.log_tail(5)}"
            )
        try:
            with urllib.request.urlopen(service.url + path, timeout=2) as response:
                response.read()
                return
        except urllib.error.HTTPError:
            return
        except (OSError, urllib.error.URLError):
            time.sleep(0.05)
    service.stop()
    raise Unavailable(f"{service.name} did not answer on {path} within {timeout:.0f}s")


def spawn(
    pinning: Pinning,
    command: Sequence[str],
    log: IO[bytes],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``command`` (pinned) in a session of its own, reading nothing, writing to ``log``."""
    return subprocess.Popen(
        pinning.wrap(command), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        cwd=cwd, env=env, start_new_session=True,
    )  # fmt: skip


def launch(
    name: str,
    command: Sequence[str],
    workdir: Path,
    *,
    port: int,
    ready_path: str,
    pinning: Pinning,
    env: dict[str, str] | None = None,
) -> Service:
    log_path = workdir / f"{name.replace(' ', '_').replace('/', '_')}.log"
    with log_path.open("wb") as log:
        try:
            process = spawn(pinning, command, log, cwd=workdir, env=env)
        except OSError as error:
            raise Unavailable(f"{name}: cannot start {command[0]}: {error}") from None
    service = Service(name, process, port, log_path)
    wait_ready(service, ready_path)
    return service


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        service.stop()


# -- the systems ---------------------------------------------------------------------------------


def start_redis(workdir: Path, pinning: Pinning) -> Service:
    """A throwaway ``redis-server`` on a free port, keeping nothing on disk."""
    if shutil.which("redis-server") is None:
        raise Unavailable("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    log_path = workdir / "redis.log"
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip
    with log_path.open("wb") as log:
        process = spawn(pinning, command, log)
    service = Service("redis", process, port, log_path)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Unavailable(f"redis exited: {service.log_tail(5)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    return service
        except OSError:
            time.sleep(0.05)
    service.stop()
    raise Unavailable(f"redis did not answer PING within {READY_TIMEOUT:.0f}s")


def staggered_jobs(
    *, queued: float, processing: float, max_age: float, stagger: float, transcriptions: int
) -> list[str]:
    """The simulator's flags for jobs that start ``stagger`` seconds apart in all, seed 7."""
    offsets = ",".join(f"{stagger * i / transcriptions:.3f}" for i in range(transcriptions))
    return [
        "--queued-seconds", str(queued),
        "--processing-seconds", str(processing),
        "--pending-max-age", str(max_age),
        "--start-offsets", offsets,
        "--seed", "7",
    ]  # fmt: skip


def start_simulator(workdir: Path, options: Sequence[str], pinning: Pinning) -> Service:
    port = free_port()
    command = [sys.executable, "-m", "proxy", "simulate", "--port", str(port), *options]
    return launch(
        "simulator",
        command,
        workdir,
        port=port,
        ready_path="/_sim/stats",
        pinning=pinning,
        env=python_env(),
    )


def start_proxy(
    workdir: Path,
    upstream: str,
    pinning: Pinning,
    *,
    name: str = "aitronos-cache-proxy",
    options: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Service:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "proxy",
        "--upstream",
        upstream,
        "--port",
        str(port),
        "--log-level",
        "warning",
        *options,
    ]
    return launch(
        name,
        command,
        workdir,
        port=port,
        ready_path="/healthz",
        pinning=pinning,
        env={**python_env(), **(env or {})},
    )


def start_bare(
    workdir: Path, response_file: Path, pinning: Pinning, *, loop: str, module: str = "bench.bare"
) -> Service:
    """The bare aiohttp handler, or (``module="bench.floor"``) the bare httptools protocol."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        module,
        "--port",
        str(port),
        "--response",
        str(response_file),
        "--loop",
        loop,
    ]
    return launch(
        f"{module.removeprefix('bench.')} ({loop})",
        command,
        workdir,
        port=port,
        ready_path="/",
        pinning=pinning,
        env=python_env(),
    )


NGINX_CONF = """\
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    {access}
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=bench:64m max_size=2g inactive=1d
                     use_temp_path=off;
    upstream origin {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            # Same isolation as the proxy's credential scope: one entry per URI and credential.
            proxy_cache_key "$request_method $request_uri $http_authorization";
            proxy_cache_lock on;
            proxy_cache_lock_timeout 30s;
            proxy_cache_lock_age 30s;
            proxy_cache_revalidate on;
            proxy_cache_use_stale updating error timeout http_500 http_502 http_503 http_504;
            proxy_cache_background_update on;
            add_header X-Cache-Status $upstream_cache_status;
        }}{gzip}
    }}
}}
"""
#: What a compressing nginx adds (issue 12's comparison): gzip for every client that accepts it.
NGINX_GZIP = """
        gzip on;
        gzip_vary on;
        gzip_proxied any;
        gzip_types application/json text/plain text/vtt application/x-subrip;"""


#: nginx's access log with the proxy's fields, one JSON line per request (unbuffered, nginx's
#: default), for the comparison with the proxy's default settings.
NGINX_ACCESS = (
    'log_format bench escape=json \'{{"method":"$request_method","path":"$uri",'
    '"status":$status,"cache":"$upstream_cache_status",'
    '"duration_ms":$request_time,"bytes":$body_bytes_sent}}\';\n'
    "    access_log {dir}/access.log bench;"
)


def start_nginx(
    workdir: Path,
    upstream_port: int,
    pinning: Pinning,
    *,
    install: bool,
    gzip: bool = False,
    access_log: bool = False,
) -> Service:
    """nginx ``proxy_cache`` with lock, revalidation and stale-while-updating, one worker;
    with ``gzip``, also ``gzip on; gzip_vary on`` for JSON and text; with ``access_log``, a
    JSON access line per request to a file."""
    binary = ensure_binary("nginx", install=install)
    home = workdir / ("nginx-log" if access_log else "nginx")
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = home / "nginx.conf"
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        NGINX_CONF.format(
            user=user,
            dir=home,
            port=port,
            upstream_port=upstream_port,
            gzip=NGINX_GZIP if gzip else "",
            access=NGINX_ACCESS.format(dir=home) if access_log else "access_log off;",
        )
    )
    command = [binary, "-p", str(home), "-c", str(conf), "-e", str(home / "error.log")]
    command += ["-g", "daemon off;"]
    name = "nginx-log" if access_log else "nginx"
    return launch(name, command, workdir, port=port, ready_path="/_sim/stats", pinning=pinning)


VARNISH_VCL = """\
vcl 4.1;

backend origin {{
    .host = "127.0.0.1";
    .port = "{upstream_port}";
}}

sub vcl_recv {{
    if (req.method != "GET" && req.method != "HEAD") {{
        return (pass);
    }}
    # The API marks its answers public; cache them despite Authorization, keyed by it below.
    return (hash);
}}

sub vcl_hash {{
    hash_data(req.url);
    hash_data(req.http.host);
    # Same isolation as the proxy's credential scope: one object per URI and credential.
    hash_data(req.http.Authorization);
    return (lookup);
}}

sub vcl_backend_response {{
    # Grace: serve an expired object while one background fetch refreshes it.
    set beresp.grace = 1h;
    # Keep: hold expired objects so the refresh is conditional (If-None-Match upstream).
    set beresp.keep = 1h;
}}

sub vcl_deliver {{
    set resp.http.X-Cache-Hits = obj.hits;
}}
"""


def start_varnish(workdir: Path, upstream_port: int, pinning: Pinning, *, install: bool) -> Service:
    """Varnish with grace and keep, a malloc store, in the foreground."""
    binary = ensure_binary("varnishd", install=install)
    home = workdir / "varnish"
    home.mkdir(parents=True, exist_ok=True)
    # varnishd compiles the VCL as its own unprivileged user, which must be able to read it.
    for directory in (workdir, home):
        directory.chmod(0o755)
    vcl = home / "bench.vcl"
    vcl.write_text(VARNISH_VCL.format(upstream_port=upstream_port))
    port = free_port()
    command = [
        binary,
        "-F",
        "-a",
        f"127.0.0.1:{port}",
        "-f",
        str(vcl),
        "-n",
        str(home / "state"),
        "-s",
        "malloc,2g",
        "-T",
        "none",
    ]
    return launch("varnish", command, workdir, port=port, ready_path="/_sim/stats", pinning=pinning)


def binary_version(command: Sequence[str]) -> str:
    """The first line a tool prints about its version, or ``not installed``."""
    if shutil.which(command[0]) is None and shutil.which(command[0], path="/usr/sbin") is None:
        return "not installed"
    binary = shutil.which(command[0]) or shutil.which(command[0], path="/usr/sbin") or command[0]
    try:
        result = subprocess.run(
            [binary, *command[1:]], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    text = (result.stdout + result.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from ``/proc/PID/status`` (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise Unavailable(f"no VmRSS for process {pid}")


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (nginx workers, the Varnish child)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(parent, []).append(int(entry.name))
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue.extend(parents.get(current, []))
    return tree


def own_cpu_seconds(pid: int) -> float:
    """User plus system CPU time consumed so far by ``pid`` alone (0 once it is gone)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time consumed so far by ``pid`` and its descendants."""
    return sum(own_cpu_seconds(member) for member in process_tree(pid))
