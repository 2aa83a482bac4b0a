"""docker-compose.yml is valid and describes the single-node and the 3-node cluster deployments.

Validation needs only the docker client (`docker compose` or `docker-compose`), not an engine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


def compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no docker compose client installed (apt-get install docker-compose)")


def resolved_config(*profiles: str) -> dict:
    """The file as compose resolves it (anchors, profiles, variables), parsed from its YAML output."""
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    done = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), *args, "config"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_default_deployment_is_qdrant_api_and_ui() -> None:
    services = resolved_config()["services"]
    assert {"qdrant", "api", "ui"} <= set(services)
    assert services["api"]["environment"]["CLIPSEARCH_STORE"] == "qdrant"
    assert services["api"]["environment"]["CLIPSEARCH_QDRANT_URL"] == "http://qdrant:6333"


def test_cluster_profile_shards_and_replicates_over_three_nodes() -> None:
    services = resolved_config("cluster")["services"]
    nodes = [name for name in services if name.startswith("qdrant-node")]
    assert len(nodes) == 3
    for node in nodes:
        assert services[node]["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
    env = services["api-cluster"]["environment"]
    assert int(env["CLIPSEARCH_QDRANT_SHARDS"]) >= 3
    assert int(env["CLIPSEARCH_QDRANT_REPLICAS"]) == 2
    host_ports = [p for s in services.values() for p in s.get("ports", [])]
    published = [str(p["published"]) if isinstance(p, dict) else str(p).split(":")[0] for p in host_ports]
    assert len(published) == len(set(published)), f"two services publish the same host port: {published}"


def raw_services() -> dict:
    """The services as written (no docker client needed), anchors merged by the YAML loader."""
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def test_every_clipsearch_variable_given_to_a_container_is_a_setting() -> None:
    from indexer.settings import settings_rows

    settings = {variable for variable, _, _ in settings_rows()}
    given = {
        (name, variable)
        for name, service in raw_services().items()
        for variable in service.get("environment") or {}
        if variable.startswith("CLIPSEARCH_")
    }
    assert given, "no service gets a CLIPSEARCH_ variable"
    assert [f"{name}: {variable}" for name, variable in sorted(given) if variable not in settings] == []


def test_servers_in_containers_listen_beyond_loopback() -> None:
    """`clipsearch serve` and `ui` listen on 127.0.0.1 unless told: a published port needs 0.0.0.0."""
    commands = [s["command"] for s in raw_services().values() if s.get("command", [None])[0] == "clipsearch"]
    servers = [c for c in commands if c[1] in ("serve", "ui")]
    assert len(servers) == 4
    for command in servers:
        assert command[command.index("--host") + 1] == "0.0.0.0", command


def test_vlm_profile_serves_a_vision_model_on_a_gpu_wired_to_the_api() -> None:
    services = resolved_config("vlm")["services"]
    vlm = services["vlm"]
    assert vlm["profiles"] == ["vlm"]  # the default deployment needs no GPU
    assert vlm["image"].startswith("vllm/vllm-openai:")
    command = vlm["command"]

    def flag(name: str) -> str:
        return command[command.index(name) + 1]

    model = flag("--model")
    assert "VL" in model  # a vision-language model: it must see the thumbnails
    assert int(flag("--max-model-len")) >= 4096
    assert json.loads(flag("--limit-mm-per-prompt"))["image"] >= 21  # listwise: top_n (20) + the query
    [gpu] = vlm["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    [port] = vlm["ports"]
    for api in ("api", "api-cluster"):
        env = services.get(api, resolved_config("vlm", "cluster")["services"][api])["environment"]
        assert env["CLIPSEARCH_VLM_URL"] == f"http://vlm:{port['target']}/v1"
        assert env["CLIPSEARCH_VLM_MODEL"] == model  # the name vLLM serves it under
        assert int(env["CLIPSEARCH_VLM_CONCURRENCY"]) <= int(flag("--max-num-seqs"))
