"""A moto S3 server on 127.0.0.1 for the remote-store tests (never any other address).

`s3_server()` starts `moto.server.ThreadedMotoServer` on a free loopback port, points fsspec's
s3fs at it through the usual AWS environment variables (subprocesses such as the CLI inherit
them), creates one bucket, and undoes all of it on exit.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import urllib.request
from collections.abc import Iterator

BUCKET = "actstore-test"


@contextlib.contextmanager
def s3_server(bucket: str = BUCKET) -> Iterator[str]:
    """Yield `s3://bucket` on a fresh moto server bound to 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    if not ipaddress.ip_address(host).is_loopback:  # the tests reach nothing outside this machine
        server.stop()
        raise RuntimeError(f"moto bound {host}, not a loopback address")
    # moto keeps its buckets in this process after a server stops: start every server empty
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"),
                           timeout=30).close()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_SESSION_TOKEN": "testing",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # an instance made before would hold another endpoint
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
        yield f"s3://{bucket}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
