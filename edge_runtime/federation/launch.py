"""Start Flower 1.42's processes on loopback for a federation of edge nodes (``edge-node federate``).

Exactly the command lines of docs/federation.md, "Running it by hand", with free ports and an isolated
``FLWR_HOME`` (Flower's CLI configuration, ``config.toml``, and its app cache):

* SuperLink: ``flower-superlink --insecure --isolation subprocess --disable-runtime-dependency-installation
  --host 127.0.0.1 --port P`` (one HTTP port for the Fleet, Control and Runtime APIs in 1.42);
* one SuperNode per edge node: ``flower-supernode --insecure --superlink 127.0.0.1:P --port Q
  --node-config "control='ipc://<state_dir>/control.ipc'"`` (Q: its own Runtime API port);
* the run: ``flwr run edge_runtime/federation/app edge --run-config '...'`` with ``[superlink.edge]
  address = "127.0.0.1:P"``, ``insecure = true`` in ``$FLWR_HOME/config.toml``.

Flower starts ``flwr-serverapp`` / ``flwr-clientapp`` itself, by name, so the folder of this
Python's executables goes first on the children's PATH.

ClientApps (``Federation.clientapp``): ``"warm"`` (the default) starts each SuperNode with
``--isolation process`` beside our pre-warmed launcher (:mod:`edge_runtime.federation.clientapp_launcher`:
one process that imported Flower and our ClientApp once and forks a child per message);
``"flower"`` is Flower's own path (``--isolation subprocess``: the SuperNode's ``flower-superexec``
starts a ``flwr-clientapp`` process per message, about 2 s of imports each). The environment
variable ``EDGE_FEDERATION_CLIENTAPP`` sets the default (``edge-node federate --clientapp`` overrides it).

SuperNodes (``Federation.supernode_poll_s``): by default each is Flower's ``flower-supernode`` run
through :mod:`edge_runtime.federation.supernode`, which shortens its fixed 3 s idle poll to
``supernode_poll_s`` (0.5 s; it patches that one Flower module, see there); ``None`` (environment
``EDGE_FEDERATION_SUPERNODE_POLL_S=flower``) runs ``flower-supernode`` itself.

With a :class:`SecureLink` (the files of ``edge-node federation-keys``) nothing is ``--insecure``:
the SuperLink serves TLS (``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``) and admits only
registered SuperNodes (``--enable-supernode-auth``; :meth:`Federation.register_supernode` runs
``flwr supernode register``), each SuperNode checks the SuperLink with ``--root-certificates`` and signs
with ``--auth-supernode-private-key``, and ``config.toml`` has ``root-certificates`` instead of ``insecure``.
docs/federation.md, "Across a real network", has the same lines for one machine each.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent / "app"
BIN_DIR = Path(sys.executable).parent
#: How a SuperNode runs its ClientApps (module docstring): our pre-warmed launcher, or a flwr-clientapp process per message.
CLIENTAPP_MODES = ("warm", "flower")


class FederationLaunchError(RuntimeError):
    """A Flower process did not start or the run failed; the message names the log to read."""


@dataclass(frozen=True)
class SecureLink:
    """TLS on the SuperLink and SuperNode authentication: the SuperLink's files of ``edge-node federation-keys``."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def from_keys(cls, keys_dir: Path) -> "SecureLink":
        """The SuperLink's files in a ``federation-keys`` folder; ValueError naming ``--keys`` when one is missing."""
        from edge_runtime.federation.keys import DeploymentKeys

        keys = DeploymentKeys(Path(keys_dir).resolve())
        link = cls(keys.superlink_ca_cert, keys.server_cert, keys.server_key)
        for path in (link.ca_cert, link.server_cert, link.server_key):
            if not path.is_file():
                raise ValueError(f"--keys {keys_dir}: no {path}; make the folder with edge-node federation-keys")
        return link


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FederationLaunchError(f"{proc.args[0]} exited with {proc.returncode}; see {log}:\n{_tail(log)}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise FederationLaunchError(f"{proc.args[0]} did not listen on 127.0.0.1:{port} within {timeout:.0f} s; see {log}")


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _poll_from_env(value: str | None) -> float | None:
    """``EDGE_FEDERATION_SUPERNODE_POLL_S``: unset = 0.5 s (our SuperNode wrapper), ``flower`` = Flower's own 3 s."""
    if value is None or value == "":
        return 0.5
    return None if value == "flower" else float(value)


def _quote_toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class Federation:
    """The Flower side of a federation: one SuperLink and one SuperNode per control endpoint."""

    workdir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    port: int = 0
    secure: SecureLink | None = None  # None: --insecure on loopback
    clientapp: str = field(default_factory=lambda: os.environ.get("EDGE_FEDERATION_CLIENTAPP", "warm"))
    supernode_poll_s: float | None = field(default_factory=lambda: _poll_from_env(os.environ.get("EDGE_FEDERATION_SUPERNODE_POLL_S")))

    def __post_init__(self) -> None:
        if self.clientapp not in CLIENTAPP_MODES:
            raise ValueError(f"clientapp must be one of {', '.join(CLIENTAPP_MODES)}, got {self.clientapp!r}")
        self.workdir = Path(self.workdir).resolve()
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"}

    def _spawn(self, name: str, cmd: list[str]) -> tuple[subprocess.Popen, Path]:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env, cwd=str(self.workdir))
        self.procs[name] = proc
        return proc, log

    def start_superlink(self, timeout: float = 60.0) -> int:
        self.port = free_port()
        tls = ["--insecure"] if self.secure is None else [
            "--ssl-ca-certfile", str(self.secure.ca_cert), "--ssl-certfile", str(self.secure.server_cert),
            "--ssl-keyfile", str(self.secure.server_key), "--enable-supernode-auth"]
        proc, log = self._spawn("superlink", [str(BIN_DIR / "flower-superlink"), *tls, "--isolation", "subprocess",
                                              "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(self.port)])
        _wait_port(self.port, proc, log, timeout)
        # flwr needs an absolute root-certificates path (flwr/cli/typing.py)
        trust = "insecure = true" if self.secure is None else f"root-certificates = {json.dumps(str(Path(self.secure.ca_cert).resolve()))}"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "edge"\n\n[superlink.edge]\naddress = "127.0.0.1:{self.port}"\n{trust}\n')
        return self.port

    def register_supernode(self, public_key: Path, name: str, timeout: float = 120.0) -> int:
        """``flwr supernode register`` a SuperNode's public key (needed with a :class:`SecureLink`); its node id."""
        cmd = [str(BIN_DIR / "flwr"), "supernode", "register", str(Path(public_key).resolve()), "edge", "--name", name, "--format", "json"]
        out = subprocess.run(cmd, env=self.env, cwd=str(self.workdir), capture_output=True, text=True, timeout=timeout)
        with open(self.workdir / "flwr-register.log", "a") as f:
            f.write(out.stdout + out.stderr)
        try:
            reply = json.loads(out.stdout)
        except json.JSONDecodeError:
            reply = {}
        if out.returncode != 0 or not reply.get("success"):
            raise FederationLaunchError(f"flwr supernode register {public_key} failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        return int(reply["node-id"])

    def start_supernode(self, name: str, control: str, timeout: float = 60.0, private_key: Path | None = None,
                        wait: bool = True) -> subprocess.Popen:
        """One SuperNode for the node behind ``control``; with a :class:`SecureLink` it signs with ``private_key``
        (registered first, else the SuperLink refuses it). ``wait``: until its Runtime API listens."""
        if self.secure is not None and private_key is None:
            raise ValueError(f"SuperNode {name}: the SuperLink authenticates SuperNodes; give its private key")
        tls = ["--insecure"] if self.secure is None else [
            "--root-certificates", str(self.secure.ca_cert), "--auth-supernode-private-key", str(private_key)]
        port = free_port()
        isolation = ["--isolation", "process"] if self.clientapp == "warm" else []
        supernode = [str(BIN_DIR / "flower-supernode")] if self.supernode_poll_s is None else [
            sys.executable, "-m", "edge_runtime.federation.supernode", "--idle-poll-s", str(self.supernode_poll_s)]
        proc, log = self._spawn(f"supernode-{name}", [
            *supernode, *tls, "--superlink", f"127.0.0.1:{self.port}", "--port", str(port),
            *isolation, "--node-config", f"control={_quote_toml(control)} name={_quote_toml(name)}"])
        if wait:
            _wait_port(port, proc, log, timeout)
        if self.clientapp == "warm":  # the SuperNode's Runtime API stays plain HTTP on loopback
            self._spawn(f"clientapps-{name}", [sys.executable, "-m", "edge_runtime.federation.clientapp_launcher",
                                               "--runtime-api-address", f"127.0.0.1:{port}", "--insecure",
                                               "--parent-pid", str(proc.pid)])
        return proc

    def stop_supernode(self, name: str) -> None:
        self._stop(f"supernode-{name}")
        self._stop(f"clientapps-{name}")

    def run(self, run_config: dict[str, Any], timeout: float = 120.0) -> str:
        """``flwr run`` the edge-runtime app; returns Flower's run id (the run goes on in the SuperLink)."""
        pairs = " ".join(f"{k}={_quote_toml(v)}" for k, v in run_config.items())
        cmd = [str(BIN_DIR / "flwr"), "run", str(APP_DIR), "edge", "--run-config", pairs, "--format", "json"]
        out = subprocess.run(cmd, env=self.env, cwd=str(self.workdir), capture_output=True, text=True, timeout=timeout)
        (self.workdir / "flwr-run.log").write_text(out.stdout + out.stderr)
        if out.returncode != 0:
            raise FederationLaunchError(f"flwr run failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        try:
            return str(json.loads(out.stdout).get("run-id", ""))
        except json.JSONDecodeError:
            return ""

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def close(self) -> None:
        """Stop the SuperNodes, then the SuperLink (and with it the ServerApp it started)."""
        for name in [n for n in self.procs if n != "superlink"] + ["superlink"]:
            self._stop(name)


def wait_for_rounds(out_dir: Path, rounds: int, timeout: float, federation: Federation | None = None) -> dict[str, Any]:
    """Block until the ServerApp wrote ``done.json`` (all rounds) in ``out_dir``; returns ``rounds.json``."""
    deadline = time.monotonic() + timeout
    done = out_dir / "done.json"
    while not done.exists():
        if federation is not None and federation.procs.get("superlink") is not None and federation.procs["superlink"].poll() is not None:
            raise FederationLaunchError(f"the SuperLink exited; see {federation.workdir / 'superlink.log'}")
        if time.monotonic() > deadline:
            got = json.loads((out_dir / "rounds.json").read_text())["rounds"] if (out_dir / "rounds.json").exists() else []
            where = f"; see {federation.workdir / 'superlink.log'}" if federation is not None else ""
            raise FederationLaunchError(f"{len(got)} of {rounds} rounds done after {timeout:.0f} s{where}")
        time.sleep(0.2)
    return json.loads((out_dir / "rounds.json").read_text())
