# syntax=docker/dockerfile:1
# The provisioner service: `provisioner run`, configured by the environment (see README).
# Secrets (DIGITALOCEAN_TOKEN or DIGITALOCEAN_TOKEN_FILE, the AMQP URL) are given at run time,
# never at build time: nothing in this file or the build context carries one.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- builder: a virtualenv with the project and its dependencies -------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
RUN python -m venv /opt/venv

# The dependencies exactly as locked (versions and hashes), in a layer of their own.
COPY requirements/runtime.txt requirements/build.txt ./requirements/
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements/runtime.txt

# The package, built by the locked setuptools in a throwaway virtualenv. pip compiles the
# bytecode here, so the read-only final image never needs to write any; pip and setuptools are
# then removed: the service never installs anything at run time.
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY service ./service
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements/build.txt \
    && /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
    && /opt/venv/bin/pip uninstall --yes setuptools pip

# --- final: the virtualenv on a clean slim image, run as an unprivileged user ------------------
FROM ${PYTHON_IMAGE}

ARG PYTHON_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="do-db-provisioner" \
      org.opencontainers.image.description="Provisions DigitalOcean managed database clusters from RabbitMQ commands" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# A fixed numeric uid, so `runAsNonRoot` policies can check it without resolving a name.
RUN groupadd --system --gid 10001 provisioner \
    && useradd --system --no-log-init --uid 10001 --gid provisioner \
       --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin provisioner

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PROVISIONER_LOG_FORMAT=json \
    PROVISIONER_HTTP_PORT=8080

USER 10001:10001
EXPOSE 8080

# slim has no curl: the interpreter asks /healthz itself; urlopen raises (exit 1) on non-2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PROVISIONER_HTTP_PORT', '8080') + '/healthz', timeout=3)"]

# SIGTERM stops consuming and drains in-flight work before exiting 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["provisioner"]
CMD ["run"]
