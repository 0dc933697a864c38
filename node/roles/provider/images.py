"""Job images: local first (offline), pulled only when missing and a registry answers.

Test and devnet images (`kaisar/busybox`, `kaisar/demo-http`, `kaisar/demo-echo`) are
built offline by `scripts/build-images.sh`; they are never pulled.
"""

from __future__ import annotations

import logging
import re

import docker
import docker.errors
import requests.exceptions

log = logging.getLogger(__name__)

# Offline images built by scripts/build-images.sh (tests, devnet, the end-to-end demo).
BUSYBOX_IMAGE = "kaisar/busybox:latest"
DEMO_HTTP_IMAGE = "kaisar/demo-http:latest"  # busybox httpd: page with "kaisar-demo-http"
DEMO_HTTP_PORT = 8080  # GET /cgi-bin/echo?x echoes method, uri, query, KAISAR_JOB_ID, body
DEMO_ECHO_IMAGE = "kaisar/demo-echo:latest"  # TCP echo (busybox nc -ll -e cat)
DEMO_ECHO_PORT = 7007

# name[:tag][@digest], as docker accepts it; rejects spaces, flags and empty names.
_IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$", re.IGNORECASE)


class ImageUnavailable(Exception):
    """The image is neither local nor pullable; the message says what to do."""


def is_valid_image_ref(image: object) -> bool:
    """True if `image` looks like a docker image reference (no spaces, no flags)."""
    return isinstance(image, str) and bool(_IMAGE_RE.fullmatch(image))  # "$" alone accepts a final newline


def ensure_image(client: docker.DockerClient, image: str, *, allow_pull: bool) -> str:
    """Return the local image id of `image`, pulling it first if missing and allowed.

    Raises ImageUnavailable when the image is neither local nor pullable, with the
    registry's answer in the message (offline machines: build or load it). Engine
    connection errors propagate unchanged.
    """
    try:
        return client.images.get(image).id
    except docker.errors.ImageNotFound:
        pass
    if not allow_pull:
        raise ImageUnavailable(
            f"image {image} is not present locally and pulling is disabled; "
            "build it (scripts/build-images.sh) or `docker load` it",
        )
    log.info("event=image_pull image=%s", image)
    try:
        # docker-py splits `repo:tag` / `repo@digest` itself; no tag means latest.
        pulled = client.images.pull(image)
    except (docker.errors.APIError, requests.exceptions.ReadTimeout) as e:
        raise ImageUnavailable(
            f"image {image} is not present locally and could not be pulled "
            f"(no registry reachable?): {_short(e)}",
        ) from e
    return pulled.id


def _short(e: BaseException) -> str:
    """One line of a docker/requests error (APIError carries the daemon's explanation)."""
    text = getattr(e, "explanation", None) or str(e)
    return str(text).strip().splitlines()[0][:300] if text else type(e).__name__
