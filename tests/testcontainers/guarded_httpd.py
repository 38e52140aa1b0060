"""A Testcontainers session as a job would run it, through `nestdock guard`.

Run by tests/guard.rs with DOCKER_HOST naming the guard's socket, inside the
test dockerd's network namespace (where published ports are), with the
image to use in NDG_IMAGE. Starts busybox httpd serving one file on a random
host port, waits for its log line, fetches the file over the mapped port,
and prints what it saw as one JSON line. Leaving the `with` block removes
the container (Testcontainers' own stop), through the guard too.
"""

import json
import os
import time
import urllib.request

from testcontainers.core.container import DockerContainer
from testcontainers.core.waiting_utils import wait_for_logs

IMAGE = os.environ["NDG_IMAGE"]
SCRIPT = (
    "mkdir -p /srv && echo hello-through-the-guard > /srv/index.html"
    " && echo httpd ready && exec httpd -f -p 8080 -h /srv"
)


def fetch(url: str, deadline: float) -> str:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> None:
    container = DockerContainer(IMAGE).with_command(["sh", "-c", SCRIPT]).with_exposed_ports(8080)
    with container:
        wait_for_logs(container, "httpd ready", timeout=30)
        host = container.get_container_host_ip()
        port = container.get_exposed_port(8080)
        body = fetch(f"http://{host}:{port}/index.html", time.monotonic() + 30)
        inspected = container.get_wrapped_container()
        inspected.reload()
        print(
            json.dumps(
                {
                    "id": container.get_container_id(),
                    "host": host,
                    "port": int(port),
                    "body": body.strip(),
                    "labels": inspected.labels,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
