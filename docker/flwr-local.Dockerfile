# Flower 1.42.0 on a local Debian base, for machines that reach no image registry (tests/test_containers.py,
# `make test-containers`): what Flower's official images offer the compose files (python with flwr 1.42.0 on PATH,
# user `app` uid 49999, workdir /app), so docker/superexec.Dockerfile builds on it with BASE_IMAGE and the SuperLink
# and SuperNode run from it with their program as entrypoint. DEBIAN_BASE: an image made with mmdebstrap and
# `podman import` (../shared/CONTAINERS.md). PIP_CERT_FILE: the CA bundle pip trusts (the image's own by default; a
# bundle mounted at build time for networks that intercept TLS).
ARG DEBIAN_BASE=localhost/debian-base
FROM ${DEBIAN_BASE}

ARG PIP_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.11.* python3-venv=3.11.* ca-certificates=2023* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 49999 --user-group --create-home app \
    && python3 -m venv /opt/venv \
    && PIP_CERT="$PIP_CERT_FILE" /opt/venv/bin/pip install --no-cache-dir flwr==1.42.0 \
    && chown -R app:app /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    FLWR_DISABLE_UPDATE_CHECK=1
USER 49999
WORKDIR /app
