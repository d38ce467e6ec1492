"""A pre-warmed ClientApp launcher: the SuperExec of one SuperNode, without a Python start per message.

With ``flower-supernode --isolation subprocess`` (Flower's default) the SuperNode starts
``flower-superexec``, which asks the SuperNode's Runtime API for tasks every second and starts a
fresh ``flwr-clientapp`` process for each (two per round: ``train``, ``evaluate``); its imports
alone cost about 2 s of CPU, much more on a loaded machine (docs/federation.md, "Where a round's
time goes"). With ``--isolation process`` the SuperNode leaves that to an outside process; this
is one:

    python -m edge_runtime.federation.clientapp_launcher --runtime-api-address 127.0.0.1:9201 --insecure

It imports Flower's ClientApp runtime and our ClientApp (``edge_runtime.federation.client_app``)
once, then asks the Runtime API for a ``flwr-clientapp`` task every ``--poll-s`` seconds (the same
``AcquireTask`` request ``flower-superexec`` makes), and for each task forks a child that runs
Flower's own :func:`flwr.supernode.runtime.run_clientapp.run_clientapp` with the task's token: the
child pulls the message, installs the FAB, loads the ClientApp (already in ``sys.modules``), runs
it and pushes the reply, exactly as ``flwr-clientapp`` does. A ClientApp that raises is replied to
with an error by ``run_clientapp`` itself; a child that dies without replying (killed, crashed)
stops its task heartbeat, and the SuperNode replies with Flower's ``ClientApp crashed`` error once
the task's token expires (two missed 30 s heartbeats), as for a killed ``flwr-clientapp``. Children
are reaped every poll; the launcher exits when ``--parent-pid`` (the SuperNode) is gone, and on
SIGTERM / SIGINT it stops its children first.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import time
import traceback

log = logging.getLogger("edge_runtime.federation.clientapp_launcher")

#: How often the launcher asks the SuperNode for a task (flower-superexec: 1 s). A local HTTP
#: request to the SuperNode's Runtime API; 0.1 s keeps pickup latency well under the SuperNode's own.
POLL_S = 0.1


#: Imported once in the launcher, inherited by every child: Flower's ClientApp runtime (about 2 s of
#: imports) and our ClientApp (Flower's ``load_app`` finds it in ``sys.modules``).
WARM_MODULES = ("flwr.supernode.runtime.run_clientapp", "edge_runtime.federation.client_app")


def _warm_imports() -> None:
    for module in WARM_MODULES:
        importlib.import_module(module)


def _child(address: str, token: str, insecure: bool, certificates: bytes | None) -> None:
    """Run one task in this (forked) process with Flower's ClientApp runtime; never returns."""
    code = 1
    try:
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        run_clientapp(runtime_api_address=address, token=token, insecure=insecure, certificates=certificates,
                      parent_pid=os.getppid(), runtime_dependency_install=False)
        code = 0
    except SystemExit as done:  # run_clientapp ends with flwr_exit -> sys.exit(code)
        code = done.code if isinstance(done.code, int) else 1
    except BaseException:  # noqa: BLE001 (a child must never return into the launcher's loop)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # not sys.exit: the launcher's atexit handlers and buffers are not the child's


class Launcher:
    """Polls one SuperNode's Runtime API for ClientApp tasks and forks a child per task."""

    def __init__(self, address: str, insecure: bool = True, certificates: bytes | None = None,
                 poll_s: float = POLL_S, parent_pid: int | None = None) -> None:
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        self.address, self.insecure, self.certificates = address, insecure, certificates
        self.poll_s, self.parent_pid = poll_s, parent_pid
        self.children: dict[int, int] = {}  # pid -> task id
        self.stopping = False
        self.launched = 0

    def _client(self):
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        retry = make_simple_http_retry_invoker()
        retry.max_tries = 1  # serve() retries every second itself, and stays responsive to SIGTERM
        return RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=self.insecure, root_certificates=self.certificates,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")], retry_invoker=retry)

    def reap(self) -> None:
        """Collect every child that exited; log the ones that failed."""
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            task = self.children.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                log.warning("ClientApp task %s (pid %s): %s", task, pid, how)

    def _parent_alive(self) -> bool:
        if self.parent_pid is None:
            return True
        try:
            os.kill(self.parent_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def launch(self, token: str, task_id: int) -> int:
        """Fork a child that runs the task; returns its pid."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _child(self.address, token, self.insecure, self.certificates)
        self.children[pid] = task_id
        self.launched += 1
        log.info("ClientApp task %s: pid %s", task_id, pid)
        return pid

    def serve(self) -> None:
        """Poll for tasks until stopped (SIGTERM / SIGINT) or the parent process is gone."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
        from flwr.supercore.constant import TaskType

        _warm_imports()
        client = self._client()
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
        log.info("ready: polling %s every %.2f s", self.address, self.poll_s)
        try:
            while not self.stopping and self._parent_alive():
                self.reap()
                try:
                    res = client.AcquireTask(request)
                except Exception as err:  # noqa: BLE001 (the SuperNode restarting: keep polling)
                    log.warning("AcquireTask failed: %s", err)
                    time.sleep(1.0)
                    continue
                if res.HasField("task") and res.token:
                    self.launch(res.token, res.task.task_id)
                    continue  # another task may be pending
                time.sleep(self.poll_s)
        finally:
            client.close()
            self.stop_children()

    def stop_children(self, timeout: float = 10.0) -> None:
        """SIGTERM every running child (Flower's handlers push its task output), then reap them."""
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.children.pop(pid, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_runtime.federation.clientapp_launcher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, HOST:PORT (its --port)")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to the Runtime API (as the SuperNode's default)")
    parser.add_argument("--root-certificates", metavar="PEM", help="CA of the Runtime API's TLS certificate (without --insecure)")
    parser.add_argument("--poll-s", type=float, default=POLL_S, help=f"seconds between task polls (default {POLL_S})")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) is gone")
    args = parser.parse_args(argv)
    if args.insecure == bool(args.root_certificates):
        parser.error("give exactly one of --insecure and --root-certificates")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    certificates = open(args.root_certificates, "rb").read() if args.root_certificates else None
    launcher = Launcher(args.runtime_api_address, insecure=args.insecure, certificates=certificates,
                        poll_s=args.poll_s, parent_pid=args.parent_pid)

    def _stop(*_: object) -> None:
        launcher.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    launcher.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
