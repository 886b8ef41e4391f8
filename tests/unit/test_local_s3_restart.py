"""The local S3 (moto's server) as the fault suite stops and starts it: really down in between (new
connections refused, a client's pooled connection fails too), back on the same port with the data."""

from __future__ import annotations

import socket

import pytest
from botocore.exceptions import EndpointConnectionError

from mlops_operator.dev.s3 import LocalS3


def test_stopped_s3_is_down_for_every_client_and_comes_back_with_its_data() -> None:
    server = LocalS3()
    server.start()
    try:
        client = server.client()
        client.create_bucket(Bucket="kept-bucket")
        client.put_object(Bucket="kept-bucket", Key="a", Body=b"1")
        port = server.port
        server.stop()
        assert not server.running
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        with pytest.raises(EndpointConnectionError):
            client.list_objects_v2(Bucket="kept-bucket")  # its keep-alive connection is gone too
        server.start()
        assert server.port == port
        assert client.get_object(Bucket="kept-bucket", Key="a")["Body"].read() == b"1"
    finally:
        server.stop()
