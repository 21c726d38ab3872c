"""cluster/: the YAML files parse, the Serve configs validate against Ray Serve's schema,
their import path and args build the app, and the versions agree."""

import pathlib
import re

import pytest

yaml = pytest.importorskip("yaml")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")
CLUSTER = pathlib.Path(__file__).resolve().parents[2] / "cluster"


def _load(name):
    with open(CLUSTER / name) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _serve_configs():
    yield "serve-config.yaml", _load("serve-config.yaml")[0]
    service = next(d for d in _load("rayservice.yaml") if d["kind"] == "RayService")
    yield "rayservice.yaml", yaml.safe_load(service["spec"]["serveConfigV2"])


@pytest.mark.parametrize("name", ["serve-config.yaml", "ray-cluster.yaml", "rayservice.yaml"])
def test_yaml_parses(name):
    docs = _load(name)
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("name,config", list(_serve_configs()),
                         ids=["serve-config", "rayservice"])
def test_serve_config_is_valid_and_builds(name, config, monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    import shardann.service.app as app_module
    from shardann.service import ServiceConfig

    ServeDeploySchema.model_validate(config)  # Ray Serve's own schema
    assert config["http_options"]["host"] == "0.0.0.0"
    (app,) = config["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert module == "shardann.service.app" and callable(getattr(app_module, attr))
    cfg = ServiceConfig.from_dict(app["args"])  # every key is a real setting
    assert cfg.require_token and cfg.num_replicas == 1
    assert cfg.request_timeout_s < config["http_options"]["request_timeout_s"]
    # without a token the builder refuses (the proxy listens on 0.0.0.0) ...
    monkeypatch.delenv("SHARDANN_TOKEN", raising=False)
    monkeypatch.delenv("SHARDANN_TOKEN_FILE", raising=False)
    with pytest.raises(ValueError, match="token"):
        getattr(app_module, attr)(app["args"])
    # ... and with one it builds the application, carrying only the token's digest
    monkeypatch.setenv("SHARDANN_TOKEN", "a-token")
    application = getattr(app_module, attr)(app["args"])
    deployment = application._bound_deployment
    assert deployment.name == "ShardannServer"
    assert deployment.max_ongoing_requests == cfg.max_ongoing_requests
    assert deployment.max_queued_requests == cfg.max_queued_requests
    (passed,) = deployment.init_args
    assert "a-token" not in repr(passed) and len(passed["token_sha256"]) == 64


def test_rayservice_manifest():
    docs = {d["kind"]: d for d in _load("rayservice.yaml")}
    svc = docs["RayService"]
    assert svc["apiVersion"] == "ray.io/v1"
    cluster = svc["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]]
    account = docs["ServiceAccount"]
    # the store's credentials: the pods' cloud identity (an IAM role bound to the account)
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
        "arn:aws:iam::")
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["SHARDANN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "shardann-token"
        # the default store is object storage: no shared volume is mounted
        assert not any("persistentVolumeClaim" in v for v in pod["spec"]["volumes"])
        assert "/data" not in {m["mountPath"] for m in container["volumeMounts"]}
    assert "PersistentVolumeClaim" not in docs  # the shared volume is the commented alternative
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:([0-9.]+)-", dockerfile, re.M).group(1)
    assert cluster["rayVersion"] == base


def test_cluster_launcher_config():
    (cfg,) = _load("ray-cluster.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type",
                "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, key
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert any("SHARDANN_TOKEN" in opt for opt in cfg["docker"]["run_options"])
    # every node reads the s3:// store with its instance profile; nothing is mounted
    for node in cfg["available_node_types"].values():
        assert node["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    assert not cfg["initialization_commands"]
    assert not any("/data" in opt for opt in cfg["docker"]["run_options"])


@pytest.mark.parametrize("name,config", list(_serve_configs()),
                         ids=["serve-config", "rayservice"])
def test_default_store_is_object_storage(name, config):
    (app,) = config["applications"]
    assert app["args"]["path"].startswith(("s3://", "gs://")), name


@pytest.mark.parametrize("name", ["serve-config.yaml", "ray-cluster.yaml", "rayservice.yaml"])
def test_no_credentials_in_files(name):
    """Credentials come from the cloud identity: no keys, passwords or tokens in YAML."""
    text = (CLUSTER / name).read_text()
    for bad in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "aws_access_key_id", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_KEY",
                "AZURE_CLIENT_SECRET", "private_key"):
        assert bad not in text, (name, bad)
    assert not re.search(r"\bAKIA[0-9A-Z]{16}\b", text), name  # an AWS access key id
    docs = _load(name)
    if name == "rayservice.yaml":
        docs = docs + [yaml.safe_load(next(d for d in docs if d["kind"] == "RayService")
                                      ["spec"]["serveConfigV2"])]

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str) and re.search(r"(secret|password|token)$", k, re.I):
                    # only references (a Secret's name) or settings, never a literal value
                    assert not isinstance(v, str) or len(v) < 20, (name, k)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    for doc in docs:
        walk(doc)


def test_readme_documents_both_stores():
    text = (CLUSTER / "README.md").read_text()
    assert "s3://" in text and "shared filesystem" in text
    assert "IRSA" in text and "instance profile" in text


def test_dockerfile_matches_installed_ray():
    import ray
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:([0-9.]+)-py(\d)(\d+)", dockerfile, re.M)
    assert base.group(1) == ray.__version__
    assert "pip install" in dockerfile
