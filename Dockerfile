# syntax=docker/dockerfile:1
# The xacthuc server image (README "Container").
#   With a registry:     docker build -t xacthuc .
#   Without (podman):    scripts/container/base-image.sh   # a local Debian base, once
#                        podman build --isolation chroot --format docker \
#                          --build-arg BASE_IMAGE=localhost/xacthuc-base:bookworm -t xacthuc .
#   Proven end to end:   scripts/container/check.sh
#   Run:                 docker run -p 50051:50051 xacthuc
# Any Debian-like base with python3 (3.11+) and its venv module will do: the service lives in
# its own virtual environment, /opt/xacthuc, first on PATH, whatever `python` the base has.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# A CA bundle for pip behind a TLS-inspecting proxy (a path the build mounts, e.g.
# `podman build -v /etc/ssl/certs/ca-certificates.crt:/run/build-ca.pem:ro
# --build-arg PIP_CERT=/run/build-ca.pem`); empty: pip's own. Only this stage sees it.
ARG PIP_CERT=
WORKDIR /src
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY protos ./protos
COPY service ./service
COPY verifiers ./verifiers
COPY clients ./clients
# The pinned set of constraints.txt, installed (not editable) into the venv; pip and
# setuptools leave it afterwards: the image runs the service, it installs nothing.
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi \
 && python3 -m venv /opt/xacthuc \
 && /opt/xacthuc/bin/python -m pip install --no-cache-dir --disable-pip-version-check \
      -c constraints.txt ".[server]" \
 && /opt/xacthuc/bin/python -m pip uninstall --yes --disable-pip-version-check pip setuptools \
 && /opt/xacthuc/bin/xacthuc --help >/dev/null

FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 xacthuc \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin xacthuc
# Owned by root, read-only for the service's user.
COPY --from=build /opt/xacthuc /opt/xacthuc
USER 10001:10001
ENV PATH=/opt/xacthuc/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    XACTHUC_LISTEN=0.0.0.0:50051 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# 50051: gRPC. 8080: /.well-known/jwks.json and status lists when XACTHUC_WELLKNOWN_LISTEN=0.0.0.0:8080
# (set XACTHUC_PUBLIC_BASE_URL to the address platforms reach it by).
EXPOSE 50051 8080
# `xacthuc health` reads its target and TLS settings from the environment (README "Health and
# container probes"): XACTHUC_LISTEN's port; TLS when XACTHUC_TLS_CERT_FILE is set, with
# XACTHUC_HEALTH_CA_FILE, XACTHUC_HEALTH_CERT_FILE/_KEY_FILE and XACTHUC_HEALTH_SERVER_NAME.
# Unhealthy while a dependency (Redis) is unreachable. podman keeps a HEALTHCHECK only in the
# docker image format (podman build --format docker).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["xacthuc", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["xacthuc"]
CMD ["serve"]
