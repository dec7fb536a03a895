# syntax=docker/dockerfile:1
# Build: docker build -t xacthuc .   Run: docker run -p 50051:50051 -e XACTHUC_LISTEN=0.0.0.0:50051 xacthuc
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY protos ./protos
COPY service ./service
COPY verifiers ./verifiers
COPY clients ./clients
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt ".[server]"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin xacthuc
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index --find-links /wheels "xacthuc[server]" && rm -rf /wheels
USER 10001
ENV XACTHUC_LISTEN=0.0.0.0:50051 PYTHONUNBUFFERED=1
# 50051: gRPC. 8080: /.well-known/jwks.json and status lists when XACTHUC_WELLKNOWN_LISTEN=0.0.0.0:8080
# (set XACTHUC_PUBLIC_BASE_URL to the address platforms reach it by).
EXPOSE 50051 8080
# `xacthuc health` reads its target and TLS settings from the environment (README "Health and
# container probes"): XACTHUC_LISTEN's port; TLS when XACTHUC_TLS_CERT_FILE is set, with
# XACTHUC_HEALTH_CA_FILE, XACTHUC_HEALTH_CERT_FILE/_KEY_FILE and XACTHUC_HEALTH_SERVER_NAME.
# Unhealthy while a dependency (Redis) is unreachable.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["xacthuc", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["xacthuc"]
CMD ["serve"]
