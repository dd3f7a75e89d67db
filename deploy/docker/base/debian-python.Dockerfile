# Not an image of its own but their base where no registry is reachable: the Python the PostLens images build on
# (their PYTHON_IMAGE build argument), on a Debian 12 made by debootstrap and imported into podman as
# localhost/debian:bookworm (deploy/images.sh).
# Debian 12's Python is 3.11, the version pyproject.toml requires. The build context's ca/ holds the host's extra CA
# certificates (a TLS-inspecting proxy's), which pip and uv must trust to reach PyPI from inside a build.
ARG DEBIAN_IMAGE=localhost/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv libpython3.11 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/bin/python3.11 /usr/local/bin/python
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt
