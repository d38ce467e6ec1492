"""Containers without a Docker engine: compose.yaml, prometheus.yml and the Dockerfiles agree with the code.

Every command a container runs must be a ``[project.scripts]`` entry point whose real argparse parser
accepts its sub-command and flags, ``edge-node run`` configurations must validate, ports must agree
between the node, the devices, the health check and Prometheus, and the Dockerfiles must install the
project the way the README does (``pip install -c constraints.txt -e ...``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from edge_runtime.core.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = ["Dockerfile", "Dockerfile.jetson"]


def scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: entry point name -> ``module:function``."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def parse_command(argv: list[str]) -> tuple[str, argparse.Namespace]:
    """Parse ``argv`` with the real parser of its entry point; fails the test on an unknown flag."""
    entry = scripts().get(argv[0])
    assert entry is not None, f"{argv[0]!r} is not an entry point in pyproject.toml (have {sorted(scripts())})"
    module = importlib.import_module(entry.split(":")[0])
    parser: argparse.ArgumentParser = module.build_parser()
    try:
        return argv[0], parser.parse_args(argv[1:])
    except SystemExit as exc:  # argparse exits 2 on unknown commands / flags
        pytest.fail(f"{shlex.join(argv)}: rejected by {entry.split(':')[0]}.build_parser() (exit {exc.code})")


def node_config(args: argparse.Namespace) -> Config:
    """The configuration an ``edge-node run`` command starts with (its --config is relative to /app = repo root)."""
    path = ROOT / args.config if args.config else None
    return load_config(path, args.set)


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def project_services(compose: dict) -> dict[str, dict]:
    """Services built from this repository (not third-party images such as Prometheus)."""
    return {name: s for name, s in compose["services"].items() if "build" in s}


def node_service(compose: dict) -> tuple[str, Config]:
    found = []
    for name, service in project_services(compose).items():
        prog, args = parse_command(service["command"])
        if prog == "edge-node" and args.command == "run":
            found.append((name, node_config(args)))
    assert len(found) == 1, f"expected exactly one edge-node run service, found {[n for n, _ in found]}"
    return found[0]


def device_services(compose: dict) -> dict[str, argparse.Namespace]:
    out = {}
    for name, service in project_services(compose).items():
        prog, args = parse_command(service["command"])
        if prog == "device-sim":
            assert args.command == "run", f"{name}: device-sim {args.command} does not stream to the node"
            out[name] = args
    return out


def dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (DOCKER / name).read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
        current = ""
    return lines


def pip_installs(name: str) -> list[list[str]]:
    """Every ``pip install`` command line in the Dockerfile's RUN instructions, as argv lists."""
    out = []
    for word, rest in dockerfile_instructions(name):
        if word != "RUN":
            continue
        for part in rest.split("&&"):
            argv = shlex.split(part)
            if "pip" in argv and "install" in argv:
                out.append(argv[argv.index("install") + 1 :])
    return out


# ------------------------------------------------------------------------------------- compose


def test_compose_services_run_real_entry_points(compose):
    services = project_services(compose)
    assert len(services) >= 2
    for name, service in services.items():
        command = service["command"]
        assert isinstance(command, list) and command, f"{name}: command must be an exec-form list"
        prog, args = parse_command(command)  # fails on an unknown entry point, sub-command or flag
        assert prog in ("edge-node", "device-sim")
        assert args.command in {"run", "demo", "keys", "config", "export", "datasets", "inspect"}
        assert service["build"]["context"] == ".."
        assert (DOCKER / service["build"]["context"] / "pyproject.toml").is_file()
        default_dockerfile = re.sub(r"\$\{[A-Z_]+:-([^}]+)\}", r"\1", service["build"]["dockerfile"])
        assert (ROOT / default_dockerfile).is_file(), default_dockerfile


def test_node_config_is_valid_and_reachable(compose):
    name, config = node_service(compose)
    bind = urlparse(config.node.bind)
    assert bind.scheme == "tcp" and bind.hostname == "0.0.0.0", "the node must listen on all interfaces in a container"
    assert config.node.metrics_port is not None and config.node.metrics_host == "0.0.0.0"
    assert config.node.state_dir.startswith("/data/")
    assert config.device == "auto"
    ports = compose["services"][name]["ports"]
    published = {int(p.split("#")[0].strip().split(":")[-1]) for p in ports}
    assert {bind.port, config.node.metrics_port} <= published
    volumes = compose["services"][name]["volumes"]
    assert any(v.split(":")[1] == "/data" for v in volumes)


def test_devices_reach_the_node(compose):
    name, config = node_service(compose)
    node_port = urlparse(config.node.bind).port
    devices = device_services(compose)
    assert devices, "no device-sim service"
    for dev_name, args in devices.items():
        endpoint = urlparse(args.endpoint)
        assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("tcp", name, node_port), dev_name
        assert name in compose["services"][dev_name]["depends_on"]
        assert args.devices >= 1 and args.samples >= args.devices
    # device-sim names its devices PREFIX-0 .. PREFIX-(N-1) (device_sim/fleet.py): names must not clash
    # between services, or the node hands one device's connection over to the other
    names = [f"{args.device_prefix}-{k}" for args in devices.values() for k in range(args.devices)]
    assert len(names) == len(set(names)), "two device-sim services use the same device names"
    assert sum(a.devices for a in devices.values()) >= 2, "a fleet of several UAVs"
    assert len(devices) >= 2, "several device-sim services"


def test_node_healthcheck_probes_the_metrics_port(compose):
    name, config = node_service(compose)
    test = compose["services"][name]["healthcheck"]["test"]
    urls = re.findall(r"http://[^'\" ]+", " ".join(test))
    assert [urlparse(u).port for u in urls] == [config.node.metrics_port]
    assert test[1] in ("python3", "python")


def test_prometheus_scrapes_the_node(compose):
    name, config = node_service(compose)
    prom_service = compose["services"]["prometheus"]
    mounted = {v.split(":")[0]: v.split(":")[1] for v in prom_service["volumes"]}
    assert mounted["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom_service["command"]
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"{name}:{config.node.metrics_port}"]
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in prom["scrape_configs"])


def test_export_command_in_compose_comment_parses(compose):
    """The documented ``edge-node export`` line is accepted by the export sub-command's parser."""
    from edge_runtime.cli.export import add_export_parser

    text = (DOCKER / "compose.yaml").read_text()
    comment = re.sub(r"\\\n#\s*", " ", text)
    lines = [line for line in comment.splitlines() if "edge-node export" in line]
    assert lines
    argv = shlex.split(lines[0][lines[0].index("edge-node export"):], comments=True)
    parser = argparse.ArgumentParser(prog="edge-node")
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv[1:])
    assert (args.command, args.checkpoint, args.out) == ("export", "/data/edge-state", "/data/model.onnx")


# ------------------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_what_the_install_needs(name):
    copied = []
    for word, rest in dockerfile_instructions(name):
        if word == "COPY":
            *sources, _dest = shlex.split(rest)
            copied += [s.rstrip("/") for s in sources if not s.startswith("--")]
    assert "constraints.txt" in copied and "pyproject.toml" in copied
    assert "README.md" in copied  # pyproject.toml's readme, needed to build the package
    for pkg in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pkg.rstrip("*") in copied
    assert "configs" in copied
    for source in copied:
        assert (ROOT / source).exists(), f"{name} copies {source}, which is not in the repository"


def test_cuda_dockerfile_installs_like_the_readme():
    readme = (ROOT / "README.md").read_text()
    assert "pip install -q -c constraints.txt -e ." in readme
    installs = pip_installs("Dockerfile")
    project = [argv for argv in installs if "-e" in argv]
    assert len(project) == 1
    argv = project[0]
    assert argv[argv.index("-c") + 1] == "constraints.txt"
    assert argv[argv.index("-e") + 1] == "."
    # no extra installs onnxruntime-gpu beside onnxruntime (the same module twice): the image replaces it
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any("onnxruntime" in dep for deps in optional.values() for dep in deps)
    run = " ".join(rest for word, rest in dockerfile_instructions("Dockerfile") if word == "RUN")
    assert "pip uninstall -y onnxruntime" in run
    # the base image carries the torch that constraints.txt pins
    pinned = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    base = [rest for word, rest in dockerfile_instructions("Dockerfile") if word == "ARG" and rest.startswith("BASE_IMAGE=")]
    assert base and base[0].split("=", 1)[1].startswith(f"pytorch/pytorch:{pinned['torch']}-cuda")
    assert base[0].endswith("-runtime")
    # onnxruntime-gpu replaces the CPU wheel (same import package), without pulling other packages
    gpu = [argv for argv in installs if any(a.startswith("onnxruntime-gpu") for a in argv)]
    assert gpu and "--no-deps" in gpu[0]


def test_jetson_dockerfile_keeps_the_jetson_torch_and_takes_other_pins_from_constraints():
    instructions = dockerfile_instructions("Dockerfile.jetson")
    base = [rest for word, rest in instructions if word == "ARG" and rest.startswith("BASE_IMAGE=")]
    assert base and "l4t-pytorch:r36" in base[0]  # JetPack 6 = L4T r36
    index = [rest for word, rest in instructions if word == "ARG" and rest.startswith("JETSON_INDEX=")]
    assert index and "jetson-ai-lab" in index[0] and "jp6" in index[0]
    run = " ".join(rest for word, rest in instructions if word == "RUN")
    # apply the Dockerfile's own grep filter to constraints.txt
    pattern = re.search(r"grep -vE '([^']+)' constraints\.txt >> (\S+)", run)
    assert pattern, "the Jetson constraints must be derived from constraints.txt"
    kept = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if not re.search(pattern.group(1), line)]
    kept_names = {line.split("==")[0] for line in kept if "==" in line}
    for jetson_own in ("torch", "torchvision", "torchaudio", "numpy", "onnxruntime"):
        assert jetson_own not in kept_names
    assert {"pyzmq", "msgpack", "pydantic", "PyYAML", "onnx", "prometheus_client"} <= kept_names
    installs = pip_installs("Dockerfile.jetson")
    project = [argv for argv in installs if "-e" in argv]
    assert len(project) == 1 and project[0][project[0].index("-c") + 1] == pattern.group(2)
    assert project[0][project[0].index("-e") + 1] == "."
    gpu = [argv for argv in installs if any(a.startswith("onnxruntime-gpu") for a in argv)]
    assert gpu and "--no-deps" in gpu[0] and gpu[0][gpu[0].index("--index-url") + 1] == "${JETSON_INDEX}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_default_command_and_ports(name):
    instructions = dockerfile_instructions(name)
    cmd = json.loads([rest for word, rest in instructions if word == "CMD"][-1])
    prog, args = parse_command(cmd)
    assert (prog, args.command) == ("edge-node", "run")
    config = node_config(args)
    exposed = {int(p) for word, rest in instructions if word == "EXPOSE" for p in rest.split()}
    assert exposed == {urlparse(config.node.bind).port, config.node.metrics_port}
    assert urlparse(config.node.bind).hostname == "0.0.0.0" and config.node.metrics_host == "0.0.0.0"
    # the checks the image build runs are real commands too
    run = " ".join(rest for word, rest in instructions if word == "RUN")
    for check in ("edge-node config", "device-sim datasets"):
        assert check in run
        parse_command(check.split())
