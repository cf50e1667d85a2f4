"""Run the README's ROS 2 commands as a user types them: in bash, after
`source .venv/bin/activate` (the one documented set-up step), in a private ROS domain.

The tools (`ros2`, launch, launch_pytest) are not PyPI wheels; scripts/bootstrap.sh
installs them from ../shared/ros2-tools when that folder exists. Without them the tests
that need them skip with the reason, except in CI (CI=true), where that is a failure.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)


def require_ros2_tools() -> None:
    """Skip the calling test module where the ROS 2 tools are missing; fail it in CI."""
    if (VENV / "bin" / "ros2").exists():
        return
    reason = (f"the ROS 2 command-line and launch tools are not installed in {VENV}: "
              "bash ../shared/ros2-tools/install.sh .venv (scripts/bootstrap.sh runs it when "
              "../shared/ros2-tools exists)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run the ROS 2 tool tests, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def private_domain(offset: int) -> int:
    """A ROS domain for one test module (others may run tests on this machine)."""
    return 1 + (os.getpid() * 7 + offset) % 100


class Shell:
    """bash with the venv activated and ROS_DOMAIN_ID set; nothing ROS from the test's own
    environment (AMENT_PREFIX_PATH must come from the activation)."""

    def __init__(self, domain: int, log_dir: Path):
        self.log_dir = log_dir
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("AMENT_PREFIX_PATH", "VIRTUAL_ENV", "PYTHONPATH")}
        self.env.update(ROS_DOMAIN_ID=str(domain), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.started: list[Background] = []

    def _argv(self, command: str) -> list[str]:
        return ["bash", "-c", f"source {shlex.quote(str(VENV / 'bin' / 'activate'))} && {command}"]

    def run(self, command: str, timeout: float = 180.0, check: bool = True) -> str:
        """Run `command` to its end (killed with its children after `timeout` s); its stdout
        and stderr together."""
        proc = subprocess.Popen(self._argv(command), env=self.env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            raise AssertionError(f"`{command}` still running after {timeout} s:\n{output}") from None
        if check:
            assert proc.returncode == 0, f"`{command}` exited {proc.returncode}:\n{output}"
        return output

    def run_together(self, commands: list[str], timeout: float = 180.0, check: bool = True) -> list[str]:
        """Run `commands` at the same time, as from several terminals; their outputs, in order.
        (Each CLI call spends most of its time starting Python and discovering the node.)"""
        with ThreadPoolExecutor(len(commands)) as pool:
            return list(pool.map(lambda command: self.run(command, timeout, check), commands))

    def start(self, command: str, name: str) -> Background:
        """Start `command` in the background (its own process group), output to a log."""
        process = Background(self._argv(command), self.env, self.log_dir / f"{name}.log")
        self.started.append(process)
        return process

    def echo(self, topic: str, until, timeout: float = 180.0, then: str | None = None):
        """`ros2 topic echo TOPIC` (and, once it runs, the command `then`) until
        `until(messages so far)` returns something true; that value. (Its stderr, e.g.
        "not published yet", goes to a file of its own.)"""
        name = f"echo{topic.replace('/', '_')}"
        echo = self.start(f"ros2 topic echo {topic} 2>{self.log_dir / name}.err", name)
        try:
            if then:
                self.run(then)
            return echo.wait_for(lambda text: until(messages(text)), timeout, f"the awaited messages on {topic}")
        finally:
            echo.stop()

    def wait_for_node(self, name: str, lifecycle: bool = True, timeout: float = 120.0) -> None:
        """Until `ros2 service list` shows `name`'s parameter (and lifecycle) services: starts
        the ros2 daemon, whose graph the param and lifecycle verbs consult, as a user's first
        command would, and waits until it has seen the node."""
        wanted = {f"{name}/get_parameters", f"{name}/set_parameters"} | ({f"{name}/get_state"} if lifecycle else set())
        deadline = time.monotonic() + timeout
        # the lifecycle and param verbs look the node up in `ros2 node list`, which can lag the services
        while not (wanted <= set(self.run("ros2 service list").split())
                   and name in self.run("ros2 node list").split()):
            assert time.monotonic() < deadline, f"no node {name} with its services in the ros2 graph within {timeout} s"
            time.sleep(1.0)

    def close(self) -> None:
        for process in reversed(self.started):
            process.stop()
        self.run("ros2 daemon stop", check=False)


class Background:
    def __init__(self, argv: list[str], env: dict, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, found, timeout: float, what: str):
        """Poll the output until `found(text)` returns something true; that value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = found(self.log())
            if value:
                return value
            if self.proc.poll() is not None:
                value = found(self.log())
                assert value, f"exited {self.proc.returncode} before {what}:\n{self.log()[-4000:]}"
                return value
            time.sleep(0.5)
        raise AssertionError(f"no {what} within {timeout} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        """Ctrl-C to the whole process group (ros2 launch and its nodes), then kill."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._log.close()


def messages(text: str) -> list[dict]:
    """The complete messages in `ros2 topic echo` output (YAML documents ended by ---)."""
    *complete, _ = text.split("\n---\n")
    return [yaml.safe_load(doc) for doc in complete if doc.strip()]


def diagnostics(shell: Shell, node: str, until=lambda values: True, timeout: float = 120.0) -> dict:
    """The key/values (and "_message") of the first /diagnostics status of `node` (a fully
    qualified name) for which `until(values)` holds."""
    name = node.lstrip("/") + ": grounding"

    def found(batch):
        matching = [values for msg in batch for values in
                    ({kv["key"]: kv["value"] for kv in s["values"]} | {"_message": s["message"]}
                     for s in msg["status"] if s["name"] == name) if until(values)]
        return matching[0] if matching else None

    return shell.echo("/diagnostics", found, timeout)
