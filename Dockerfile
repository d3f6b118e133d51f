# The worker image. Two stages: the build stage installs the locked dependencies (hash-checked,
# deploy/requirements.lock) and the connector into a virtual environment; the final stage copies
# only that environment onto the same slim base and runs it as a non-root user. Every dependency
# ships a manylinux wheel, so no compiler is needed in either stage.
# Pin a digest (python:3.11-slim-bookworm@sha256:...) in your own build for byte-for-byte repeatable images.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY deploy/requirements.lock ./
RUN python -m venv /opt/connector \
    && /opt/connector/bin/pip install --require-hashes --no-deps --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY connector ./connector
RUN /opt/connector/bin/pip install --no-deps .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="commercetools-payment-connector" \
      org.opencontainers.image.description="Asynchronous commercetools payment connector: queue deliveries in, PSP operations out, outcomes written back" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
RUN groupadd --system --gid 10001 connector \
    && useradd --system --uid 10001 --gid connector --no-create-home --shell /usr/sbin/nologin connector
COPY --from=build /opt/connector /opt/connector
ENV PATH=/opt/connector/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONNECTOR_LOG_FORMAT=json \
    CONNECTOR_HTTP_PORT=8080
USER 10001:10001
EXPOSE 8080
# Liveness only (the event loop answers): a queue or commercetools outage must not mark it unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["connector", "healthcheck"]
ENTRYPOINT ["connector"]
CMD ["run"]
