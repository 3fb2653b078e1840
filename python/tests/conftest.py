"""Fixtures: real redis-server processes on loopback ports (plain and TLS),
started by the tests and stopped after them, with their faults (kill,
restart, SIGSTOP)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import List, Optional

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server without persistence on 127.0.0.1."""

    def __init__(self, tls: Optional["Certs"] = None) -> None:
        self.port = free_port()
        self.tls = tls
        self.dir = tempfile.mkdtemp(prefix="tollgate-py-redis-")
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir]
        if self.tls:
            args += [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no",
            ]
        else:
            args += ["--port", str(self.port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if self.tls or self.ping():
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def command(self, *args: str) -> bytes:
        """One command over a plain socket (RESP), the raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            req = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
            s.sendall(req.encode())
            return s.recv(65536)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Certs:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost it
    signed, plus a CA that did not sign it (made with openssl)."""

    def __init__(self, root: Path) -> None:
        self.ca, self.cert, self.key, self.other_ca = (root / n for n in ("ca.crt", "redis.crt", "redis.key", "other.crt"))
        ca_key, other_key, csr, ext = root / "ca.key", root / "other.key", root / "redis.csr", root / "ext.cnf"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        for key, crt, name in ((ca_key, self.ca, "tollgate test CA"), (other_key, self.other_ca, "other CA")):
            run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                "-days", "2", "-subj", f"/CN={name}")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key), "-out", str(csr),
            "-subj", "/CN=tollgate test redis")
        run("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(self.cert), "-days", "2", "-extfile", str(ext))


@pytest.fixture
def redis_server():
    servers: List[RedisServer] = []

    def make() -> RedisServer:
        s = RedisServer()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def shared_redis():
    s = RedisServer()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_redis(certs):
    s = RedisServer(tls=certs)
    yield s
    s.stop()


@pytest.fixture
def key():
    return f"py-{uuid.uuid4().hex[:12]}"
