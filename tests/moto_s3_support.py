"""A real S3-compatible server for the tests: moto's standalone server in a subprocess.

``moto_s3`` (session) starts ``python -m moto.server`` on a free port of 127.0.0.1,
points the standard environment at it (``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP=true``,
dummy ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION=us-east-1``; set
before the test module starts Ray, so Ray workers inherit it) and yields a
:class:`MotoS3` with the endpoint and ``make_bucket``/``upload`` helpers. The
server process is stopped and the environment restored at the end.
"""

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

ENV = {"AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "testing",
       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    """The running server: ``endpoint`` and helpers that go through pyarrow's S3."""

    def __init__(self, endpoint):
        self.endpoint = endpoint

    def filesystem(self):
        from pyarrow import fs

        return fs.S3FileSystem(endpoint_override=self.endpoint, scheme="http",
                               access_key=ENV["AWS_ACCESS_KEY_ID"],
                               secret_key=ENV["AWS_SECRET_ACCESS_KEY"],
                               region=ENV["AWS_REGION"], allow_bucket_creation=True)

    def make_bucket(self, prefix="shardann"):
        """A new, empty bucket; returns its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.filesystem().create_dir(name)
        return name

    def upload(self, local, bucket, key):
        """Copy the local file ``local`` to ``s3://bucket/key``; returns that URI."""
        fs = self.filesystem()
        with open(local, "rb") as src, fs.open_output_stream(f"{bucket}/{key}") as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)
        return f"s3://{bucket}/{key}"


@pytest.fixture(scope="session")
def moto_s3():
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start on {endpoint}") from None
            time.sleep(0.1)
    saved = {k: os.environ.get(k) for k in [*ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield MotoS3(endpoint)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
