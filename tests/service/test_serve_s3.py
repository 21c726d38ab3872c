"""``shardann serve s3://...``: the service over a store on an S3-compatible server
(moto's standalone server on 127.0.0.1), credentials and endpoint from the
standard AWS environment."""

import numpy as np
import pytest
from service_support import TOKEN, build_store, free_port, serve_command

import shardann


@pytest.mark.ray
@pytest.mark.slow  # a full `shardann serve` subprocess with its own Ray: 30-120 s here
def test_serve_an_s3_store(tmp_path, svc_data, s3_env):
    xb, xq, xt = svc_data
    index = build_store(tmp_path / "built", xt, xb)
    uri = f"s3://{s3_env.new_bucket()}/served"
    index.save(uri)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    port = free_port()
    with serve_command([uri, "--shards", "2", "--num-cpus", "2", "--token-file", token_file,
                        "--log-level", "WARNING"], port) as proc:
        from shardann.service import Client
        with Client(f"http://127.0.0.1:{port}", TOKEN) as client:
            D, I = client.search(xq[:8], 5, nprobe=4)
            want_D, want_I = shardann.open_index(uri).search(xq[:8], 5, nprobe=4)
            np.testing.assert_array_equal(I, want_I)
            np.testing.assert_array_equal(D, want_D)
            # a write through the service commits to the S3 store
            client.delete([int(want_I[0, 0])])
            assert client.stats()["version"] == 2
    assert proc.returncode == 0, proc.output
    assert shardann.open_index(uri).ntotal == xb.shape[0] - 1
