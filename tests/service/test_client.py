"""``shardann.Client`` without a service: no answer at all is the client's own error."""

import httpx
import pytest
from service_support import free_port

from shardann.errors import ShardannError
from shardann.service.client import Client, ServiceConnectionError, ServiceError


def test_refused_connection_is_a_service_connection_error():
    url = f"http://127.0.0.1:{free_port()}"  # bound a moment ago and released: nobody listens
    with Client(url, retries=0) as client:
        for call in (lambda: client.search([[0.0] * 4], 3), client.health, client.stats,
                     lambda: client.add([[0.0] * 4]), lambda: client.delete([1])):
            with pytest.raises(ServiceConnectionError, match=f"cannot connect.*{url}") as info:
                call()
            err = info.value
            assert isinstance(err, ServiceError) and isinstance(err, ShardannError)
            assert isinstance(err, ConnectionError)  # what `except ConnectionError` expects
            assert err.url.startswith(url + "/") and err.status is None
            assert isinstance(err.__cause__, httpx.ConnectError)


def test_timeout_and_broken_connection_name_the_url():
    def handler(request):
        if request.url.path == "/v1/stats":
            raise httpx.ReadTimeout("timed out", request=request)
        raise httpx.RemoteProtocolError("server disconnected", request=request)

    with Client("http://svc:1", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ServiceConnectionError, match="within the timeout.*http://svc:1"):
            client.stats()
        with pytest.raises(ServiceConnectionError, match="broke.*POST http://svc:1/v1/search"):
            client.search([[0.0] * 4], 3)
