"""The `store` host of the multi-host test: Redis and SeaweedFS on the host's address.

Run on that host (`python -m tests.netns_store ADDRESS`). Prints one JSON line (the Redis
URL, the S3 endpoint and credentials) once both answer, then serves until SIGTERM, when it
stops them and removes their data.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

from jobql.redis_server import redis_server_binary
from jobql.s3_server import S3Server

REDIS_PORT = 6379


def main(address: str) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    redis = subprocess.Popen(
        [redis_server_binary(), "--bind", address, "--port", str(REDIS_PORT),
         "--save", "", "--appendonly", "no", "--protected-mode", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    s3 = S3Server(host=address, with_parent=True)
    try:
        s3.start()
        print(
            json.dumps(
                {
                    "redis_url": f"redis://{address}:{REDIS_PORT}/0",
                    "s3_endpoint_url": s3.endpoint_url,
                    "access_key_id": s3.credentials.access_key_id,
                    "secret_access_key": s3.credentials.secret_access_key,
                }
            ),
            flush=True,
        )
        stop.wait()
    finally:
        s3.close()
        redis.terminate()
        redis.wait(10)


if __name__ == "__main__":
    main(sys.argv[1])
