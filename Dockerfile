# The provisioner service: `provisioner run`, configured by the environment (see README).
# Secrets (DIGITALOCEAN_TOKEN or DIGITALOCEAN_TOKEN_FILE, the AMQP URL) are given at run time,
# never at build time: nothing in this file or the build context carries one.
#
# `make image` builds it (docker or podman). By hand, from the repository:
#   docker build --secret id=build-ca,src=/etc/ssl/certs/ca-certificates.crt -t provisioner .
# The build-ca secret is optional: the CA bundle pip trusts while it downloads, for networks
# that reach PyPI through a TLS-intercepting proxy. It is mounted for the install steps only
# and is in no layer of the image.
#
# No `# syntax=` line: the engine's built-in Dockerfile frontend has everything used here,
# and fetching another one needs a registry.

ARG PYTHON_IMAGE=docker.io/library/python:3.11.14-slim-bookworm

# --- builder: a virtualenv with the project and its dependencies -------------------------------
FROM ${PYTHON_IMAGE} AS builder

# SOURCE_DATE_EPOCH makes pip write hash-checked bytecode, valid whatever the file times
# become when the virtualenv is copied: the read-only final image never compiles at start.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_PROGRESS_BAR=off \
    SOURCE_DATE_EPOCH=0

WORKDIR /src
# The installer lives in a throwaway virtualenv; the service's has no pip or setuptools.
RUN python -m venv /opt/build \
    && python -m venv --without-pip /opt/venv

# The dependencies exactly as locked (versions and hashes), in a layer of their own.
COPY requirements/runtime.txt requirements/build.txt ./requirements/
RUN --mount=type=secret,id=build-ca,required=false \
    if [ -s /run/secrets/build-ca ]; then export PIP_CERT=/run/secrets/build-ca; fi \
    && /opt/build/bin/pip --python /opt/venv/bin/python install \
       --require-hashes --no-deps -r requirements/runtime.txt \
    && /opt/build/bin/pip install --require-hashes --no-deps -r requirements/build.txt

# The package, built by the locked setuptools without fetching anything, then installed.
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY service ./service
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --no-index --wheel-dir /tmp/wheels . \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-deps --no-index \
       /tmp/wheels/*.whl

# --- final: the virtualenv on a clean base, run as an unprivileged user ------------------------
FROM ${PYTHON_IMAGE}

# A fixed numeric uid, so `runAsNonRoot` policies can check it without resolving a name.
# The base's installers go too: nothing is installed at run time, and scanners rightly flag
# what sits unused. The official image has pip, setuptools and wheel installed and ensurepip's
# wheels; a Debian base has ensurepip's wheels as packages (python3.11-venv needs them).
RUN groupadd --system --gid 10001 provisioner \
    && useradd --system --no-log-init --uid 10001 --gid provisioner \
       --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin provisioner \
    && if python -m pip --version >/dev/null 2>&1; then \
         python -m pip uninstall --yes --quiet pip setuptools wheel; \
       fi \
    && rm -rf /usr/local/lib/python3*/ensurepip/_bundled \
    && if [ "$(dpkg-query -W -f '${db:Status-Status}' python3.11-venv 2>/dev/null)" = installed ]; then \
         dpkg --purge python3.11-venv python3-pip-whl python3-setuptools-whl; \
       fi

COPY --from=builder /opt/venv /opt/venv
COPY scripts/container_healthcheck.py /opt/venv/bin/provisioner-healthcheck

# PROVISIONER_SHUTDOWN_GRACE_S: `docker stop` and `podman stop` kill after 10 s; 7 s of
# draining leave time to return the rest to its queue and close, on a busy machine too. More: raise it together
# with the stop timeout (`--stop-timeout`, `stop_grace_period`, terminationGracePeriodSeconds).
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PROVISIONER_LOG_FORMAT=json \
    PROVISIONER_HTTP_PORT=8080 \
    PROVISIONER_SHUTDOWN_GRACE_S=7

USER 10001:10001
EXPOSE 8080

# Finds the port the service listens on (PROVISIONER_HTTP_PORT may be 0) and asks /healthz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["provisioner-healthcheck"]

# SIGTERM stops consuming and drains in-flight work before exiting 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["provisioner"]
CMD ["run"]

# `make image` adds the version (from pyproject.toml) and the git revision with --label.
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="do-db-provisioner" \
      org.opencontainers.image.description="Provisions DigitalOcean managed database clusters from RabbitMQ commands" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
