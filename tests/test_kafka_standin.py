"""The Kafka stand-in's entry point (tests/containers/kafka/run) reads the official apache/kafka
image's environment by that image's documented rules.

A fake ``java`` on PATH records the commands instead of running a broker: these tests look only at
what the entry point derives from the environment. That the broker runs with it is proven by the
suite itself, which runs on the stand-in wherever a Docker engine answers and no registry does.
"""

import os
import subprocess
from pathlib import Path

ENTRY_POINT = Path(__file__).parent / "containers" / "kafka" / "run"


def run_entry_point(tmp_path: Path, environment: dict[str, str]) -> tuple[dict[str, str], list[list[str]]]:
    """(server.properties as a dict, the arguments of each java command)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "java-calls"
    (fake_bin / "java").write_text(f'#!/usr/bin/env bash\nprintf "%s\\x1f" "$@" >> {calls}\necho >> {calls}\n')
    (fake_bin / "java").chmod(0o755)
    config = tmp_path / "config"
    config.mkdir()
    # A clean environment: the developer's own KAFKA_* variables must not leak into the properties.
    clean = {"PATH": f"{fake_bin}:{os.environ['PATH']}", "STANDIN_CONFIG_DIR": str(config), **environment}
    subprocess.run(["bash", str(ENTRY_POINT)], env=clean, check=True, timeout=30, capture_output=True)
    lines = (config / "server.properties").read_text().splitlines()
    properties = dict(line.split("=", 1) for line in lines if line)
    commands = [line.rstrip("\x1f").split("\x1f") for line in calls.read_text().splitlines()]
    return properties, commands


def test_variables_become_properties_by_the_official_naming_rules(tmp_path: Path) -> None:
    properties, commands = run_entry_point(
        tmp_path,
        {
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://127.0.0.1:19092",
            "KAFKA_NUM_PARTITIONS": "4",
            "KAFKA_ABC___DEF": "a dash",
            "KAFKA_ABC__DEF": "an underscore",
            "KAFKA_HEAP_OPTS": "-Xms256m -Xmx768m",
            "KAFKA_LOG4J_ROOT_LOGLEVEL": "WARN",
            "CLUSTER_ID": "-kBDqNgSRc2lD4ZJxWfPtg",  # a valid id may start with '-'
        },
    )
    assert properties == {
        "node.id": "1",
        "process.roles": "broker,controller",
        "advertised.listeners": "PLAINTEXT://127.0.0.1:19092",
        "listeners": "PLAINTEXT://0.0.0.0:19092",  # derived from the advertised listeners
        "num.partitions": "4",
        "abc-def": "a dash",
        "abc_def": "an underscore",
    }
    format_storage, broker = commands
    assert format_storage[:2] == ["-Xms256m", "-Xmx768m"]
    assert "--cluster-id=-kBDqNgSRc2lD4ZJxWfPtg" in format_storage and "kafka.tools.StorageTool" in format_storage
    assert broker[-2:] == ["kafka.Kafka", str(tmp_path / "config" / "server.properties")]
    assert (tmp_path / "config" / "log4j.properties").read_text().startswith("log4j.rootLogger=WARN, stdout\n")


def test_no_property_starts_one_combined_node_on_port_9092_with_the_default_cluster(tmp_path: Path) -> None:
    properties, commands = run_entry_point(tmp_path, {})
    assert properties["process.roles"] == "broker,controller"
    assert properties["advertised.listeners"] == "PLAINTEXT://localhost:9092"
    assert any(argument.startswith("--cluster-id=") for argument in commands[0])
    assert commands[0][:2] == ["-Xmx1G", "-Xms1G"]
