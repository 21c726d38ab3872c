"""A real S3-compatible server for tests: moto's standalone server (``moto[server]``)
in its own process, speaking the S3 HTTP API on 127.0.0.1 at a free port."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

#: credentials moto accepts (any do); tests pass them like real ones
ACCESS_KEY = "shardann-test-key"
SECRET_KEY = "shardann-test-secret-0123456789"
REGION = "us-east-1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1; :meth:`stop` ends it."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)

    @property
    def env(self):
        """The standard environment that points the AWS SDKs at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}

    @property
    def options(self):
        """The same as explicit ``storage_options``."""
        return {"aws_endpoint": self.endpoint, "allow_http": True,
                "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY,
                "aws_region": REGION}

    def new_bucket(self):
        """A new, empty bucket's name."""
        import pyarrow.fs as pafs

        name = f"b-{uuid.uuid4().hex[:12]}"
        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
                               access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION,
                               allow_bucket_creation=True)
        fs.create_dir(name)
        return name

    def upload(self, local, bucket, key):
        """Copy the local file ``local`` to ``s3://bucket/key``; returns that URI."""
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
                               access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION)
        with open(local, "rb") as src, fs.open_output_stream(f"{bucket}/{key}") as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)
        return f"s3://{bucket}/{key}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def set_env(server, environ=os.environ):
    environ.update(server.env)
