"""``shardann serve`` (``shardann.cli.serve``), the config and token rules, and
import hygiene: ``import shardann`` and the client stay free of Ray and FastAPI."""

import argparse
import json
import os
import re
import subprocess
import sys
import time

import pytest
from service_support import TOKEN, build_store, free_port, serve_command

from shardann.cli import serve
from shardann.cli.serve import config_from_args
from shardann.service.config import (
    ServiceConfig,
    check_auth_settings,
    is_loopback,
    resolve_token_digest,
    token_digest,
)


def _args(*argv):
    return serve.add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_arguments_make_a_config(tmp_path):
    args = _args(str(tmp_path / "idx"), "--shards", "3", "--replicas", "2", "--port", "9000",
                 "--max-k", "50", "--batch-wait-ms", "5")
    cfg = config_from_args(args)
    assert (cfg.num_shards, cfg.replicas, cfg.max_k) == (3, 2, 50)
    assert cfg.batch_wait_timeout_s == pytest.approx(0.005)
    assert os.path.isabs(cfg.path) and args.port == 9000 and args.host == "127.0.0.1"
    assert cfg.recall_estimate and cfg.recall_cpu_fraction == 0.01
    cfg = config_from_args(_args("idx", "--recall-cpu-fraction", "0.05", "--no-recall-estimate"))
    assert (cfg.recall_estimate, cfg.recall_cpu_fraction) == (False, 0.05)
    with pytest.raises(ValueError, match="recall_cpu_fraction"):
        config_from_args(_args("idx", "--recall-cpu-fraction", "0"))


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("127.8.9.1", True),
                                       ("::1", True), ("localhost", True),
                                       ("0.0.0.0", False), ("::", False),
                                       ("192.168.1.4", False), ("", False)])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_refuses_public_host_without_token(tmp_path, monkeypatch):
    from shardann.cli import UsageError

    monkeypatch.delenv("SHARDANN_TOKEN", raising=False)
    monkeypatch.delenv("SHARDANN_TOKEN_FILE", raising=False)
    with pytest.raises(UsageError, match="refusing to serve on '0.0.0.0'"):
        serve.run(_args(str(tmp_path), "--host", "0.0.0.0"))
    with pytest.raises(UsageError, match="token file"):
        serve.run(_args(str(tmp_path), "--host", "0.0.0.0", "--token-file",
                         str(tmp_path / "missing")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UsageError, match="empty"):
        serve.run(_args(str(tmp_path), "--token-file", str(tmp_path / "empty")))


def test_busy_port_is_a_clear_error_before_ray_starts(tmp_path, small_index):
    import socket

    from shardann.cli import CommandError

    small_index.save(tmp_path)  # the store is checked first
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CommandError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            serve.run(_args(str(tmp_path), "--port", str(port)))
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def _not_an_index(tmp_path, kind):
    path = tmp_path / kind
    path.mkdir()
    if kind == "junk":  # a manifest directory with garbage in it
        (path / "notes.txt").write_text("hello")
        (path / "_manifests").mkdir()
        (path / "_manifests" / "v00000001.json").write_text("{not json")
    return path


@pytest.mark.parametrize("kind,cause", [("empty", "no shardann index"),
                                        ("junk", "manifest is not valid JSON")])
def test_no_index_fails_fast_before_ray_starts(tmp_path, kind, cause):
    from shardann.cli import CommandError

    path = _not_an_index(tmp_path, kind)
    t0 = time.monotonic()
    with pytest.raises(CommandError, match=f"cannot serve {path}: .*{cause}"):
        serve.run(_args(str(path), "--port", str(free_port())))
    assert time.monotonic() - t0 < 2.0  # it took 17-27 s, after starting Ray
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


# the console script `shardann` runs shardann.cli:main; `python -m shardann.cli` is the same
# (its error classes exist once, so a CommandError is one line there too, not a traceback)
@pytest.mark.parametrize("command", [
    ["-c", "import sys; from shardann.cli import main; sys.exit(main())"],
    ["-m", "shardann.cli"]], ids=["script", "module"])
def test_no_index_is_one_line_and_status_1_from_the_command(tmp_path, command):
    path = _not_an_index(tmp_path, "empty")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, *command, "serve", str(path), "--debug",
                          "--port", str(free_port())], capture_output=True, text=True,
                         timeout=120)
    seconds = time.monotonic() - t0
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        f"shardann serve: error: cannot serve {path}: no shardann index at '{path}' "
        "(no _manifests/v*.json manifest)"], out.stderr
    assert out.stdout == ""
    assert seconds < 15  # the interpreter and imports; no Ray (it took 17-27 s)


def test_serve_help_tells_the_limits_apart(capsys):
    from shardann.cli import main

    assert main(["serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-vectors-per-request N largest number of query vectors in one search" in text
    assert "--batch-max-size N micro-batching" in text
    assert "--max-batch-size" not in text  # the old spelling is a hidden alias
    assert "k-means" not in text and "--log-level" in text
    # the old spelling still works, and says what it is now
    assert _args("idx").max_vectors_per_request == ServiceConfig().max_batch_size
    args = _args("idx", "--max-batch-size", "7", "--batch-max-size", "3")
    assert config_from_args(args).max_batch_size == 7
    assert config_from_args(args).batch_max_size == 3
    assert "--max-batch-size is now --max-vectors-per-request" in capsys.readouterr().err
    cfg = config_from_args(_args("idx", "--max-vectors-per-request", "9"))
    assert cfg.max_batch_size == 9


def test_one_serving_line_and_one_token_warning(tmp_path, small_index, monkeypatch, capsys,
                                                caplog):
    """``serve.run`` around a stand-in for ``run`` that builds the app as ``run`` does:
    the no-token warning comes once (from build_app), the URL line once."""
    import logging

    ray = pytest.importorskip("ray")
    from shardann.service import server
    from shardann.service.app import build_app

    path = tmp_path / "idx"
    small_index.save(path)
    port = free_port()
    for name in ("SHARDANN_TOKEN", "SHARDANN_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: None)

    def run(config, *, host, port, ingress):
        build_app(dict(config.to_dict(), host=host))
        return f"http://{host}:{port}"

    monkeypatch.setattr(server, "run", run)
    serve_logger = logging.getLogger("ray.serve")
    monkeypatch.setattr(serve_logger, "level", serve_logger.level)  # serve.run quiets it
    caplog.set_level(logging.WARNING)
    assert serve.run(_args(str(path), "--port", str(port), "--ingress", "proxy",
                            "--detach")) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "serving on" in line] == [
        f"shardann: serving on http://127.0.0.1:{port}  ({path}, 1 shard(s) x 1 replica(s); "
        "no token: loopback only)"]
    warnings = [r for r in caplog.records if "without a bearer token" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert serve_logger.level == logging.WARNING  # Serve's INFO lines stay out


def test_ingress_defaults_to_direct_on_a_local_ray():
    assert _args("idx").ingress is None  # resolved in serve.run: direct, or proxy with --address
    assert _args("idx", "--ingress", "proxy").ingress == "proxy"
    with pytest.raises(SystemExit):
        _args("idx", "--ingress", "haproxy")


def test_token_sources(tmp_path):
    f = tmp_path / "tok"
    f.write_text(f"  {TOKEN}\n")
    digest = token_digest(TOKEN)
    assert resolve_token_digest(ServiceConfig(token_file=str(f)), {}) == digest
    assert resolve_token_digest(ServiceConfig(), {"SHARDANN_TOKEN": TOKEN}) == digest
    assert resolve_token_digest(ServiceConfig(), {"SHARDANN_TOKEN_FILE": str(f)}) == digest
    assert resolve_token_digest(ServiceConfig(), {"SHARDANN_TOKEN": " "}) is None
    assert resolve_token_digest(ServiceConfig(token_sha256=digest), {}) == digest
    check_auth_settings(ServiceConfig(host="0.0.0.0"), digest)  # fine with a token
    with pytest.raises(ValueError, match="require_token"):
        check_auth_settings(ServiceConfig(require_token=True), None)


@pytest.mark.parametrize("bad,err", [({"num_shards": 0}, ValueError),
                                     ({"max_k": "10"}, TypeError),
                                     ({"backend": "gpu"}, ValueError),
                                     ({"token_sha256": TOKEN}, ValueError),
                                     ({"request_timeout_s": 0}, ValueError),
                                     ({"max_queued_requests": -2}, ValueError),
                                     ({"nshards": 2}, ValueError)])
def test_config_validation(bad, err):
    with pytest.raises(err):
        ServiceConfig.from_dict(bad)


def test_imports_stay_light():
    code = ("import sys, shardann, shardann.service, shardann.service.client; "
            "c = shardann.service.Client('http://127.0.0.1:1'); "
            "print(sorted(m for m in ('ray', 'fastapi', 'starlette', 'prometheus_client') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.ray
@pytest.mark.slow  # a full `shardann serve` subprocess: 30-120 s here
def test_serve_command_runs_and_stops(tmp_path, svc_data):
    """``python -m shardann.cli serve`` in a subprocess (its own local Ray): serves,
    answers with the token, and on SIGINT stops Serve and its shard actors."""
    xb, xq, xt = svc_data
    path = tmp_path / "idx"
    build_store(path, xt, xb)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    port = free_port()
    with serve_command([path, "--shards", "2", "--num-cpus", "2", "--token-file", token_file,
                        "--log-level", "WARNING"], port) as proc:
        import httpx

        from shardann.service import Client
        with Client(f"http://127.0.0.1:{port}", TOKEN) as client:
            D, I = client.search(xq[:4], 5, nprobe=4)
            assert I.shape == (4, 5) and (I >= 0).all()
            assert client.stats()["num_shards"] == 2
        r = httpx.post(f"http://127.0.0.1:{port}/v1/search",
                       json={"vectors": xq[:1].tolist()})
        assert r.status_code == 401
    out = proc.output
    assert proc.returncode == 0, out
    assert "bearer token required" in out and "stopping" in out
    # exactly one URL line, and it is the true one
    assert [line for line in out.splitlines() if "serving" in line] == [
        f"shardann: serving on http://127.0.0.1:{port}  ({path}, 2 shard(s) x 1 replica(s); "
        "bearer token required)"], out
    urls = set(re.findall(r"https?://[\w.\[\]:-]+", out))
    assert urls == {f"http://127.0.0.1:{port}"}, out  # Serve's "ready at <proxy port>" is gone
    for noise in ("is ready at", "Connecting to existing Serve app", "graceful_shutdown",
                  "Nothing to shut down", "Started a local Ray", "Token authentication",
                  "\x1b[", "Traceback", "without a bearer token"):
        assert noise not in out, (noise, out)
    json.dumps(out)  # printable
