# syntax=docker/dockerfile:1.7
#
# The invoice-batch image: one image, three long-running roles chosen by the
# command (consume, collect, emulator) plus one-shot commands (db upgrade,
# produce, status).
#
# Stage 1 builds wheels for the project and every dependency; stage 2 installs
# them from that folder with no compiler, no pip cache and no network, then
# drops root. Dependency wheels are built before the source is copied, so a
# code change rebuilds one small wheel instead of all of them.
#
# Build and run:
#   docker build -t invoice-batch:0.1.0 .
#   docker run --rm invoice-batch:0.1.0 --help
#
# The base is pinned to a patch release; pin the digest too
# (python:3.11.14-slim-bookworm@sha256:...) where the registry is reachable.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# A C compiler and OpenSSL's headers for the project's one extension
# (invoice_batch/_avro_rows.c, the consumer's decoding of clean records; it hashes
# with the libcrypto that Python's hashlib links, which the runtime image has); they
# stay in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*

# Dependencies first: this layer is reused until pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('requirements.txt', 'w').write(chr(10).join(deps) + chr(10))" \
 && pip wheel --wheel-dir /wheels --requirement requirements.txt

# Then the project itself; pyproject.toml maps these folders to the
# invoice_batch.* packages and to invoice_batch_emulator.
COPY setup.py ./
COPY invoice_batch/ invoice_batch/
COPY consumer/ consumer/
COPY collector/ collector/
COPY schemas/ schemas/
COPY emulator/ emulator/
# The wheel must hold the compiled extension: the build fails rather than ship
# an image that decodes at a third of the speed.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -c "import sys, zipfile, glob; names = zipfile.ZipFile(glob.glob('/wheels/invoice_batch-*.whl')[0]).namelist(); sys.exit(not any(n.startswith('invoice_batch/_avro_rows') and n.endswith('.so') for n in names))"


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="invoice-batch" \
      org.opencontainers.image.description="Kafka invoice events in, classified-invoice events out, through Claude's Message Batches API" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed numeric uid/gid so that orchestrators can check runAsNonRoot and so
# that volume ownership is the same on every host.
RUN groupadd --system --gid 10001 invoice \
 && useradd --system --uid 10001 --gid invoice --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin invoice

WORKDIR /app

# The wheels are bind-mounted from the build stage, so they never become a layer
# of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels invoice-batch \
 && mkdir -p /app/var \
 && chown invoice:invoice /app/var

# The default DATABASE_URL is a SQLite file under ./var/, i.e. /app/var.
USER 10001:10001

# Metrics and /healthz: consumer 9101, collector 9102 (METRICS_PORT overrides).
EXPOSE 9101 9102

# No curl in the slim image: the stdlib does the request. Without METRICS_PORT
# the port follows the command, as the services themselves do (the command line
# of PID 1 says consume or collect). Any non-2xx answer or no answer exits 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; role = open('/proc/1/cmdline', 'rb').read(); port = os.environ.get('METRICS_PORT') or ('9102' if b'collect' in role else '9101'); urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

# The services stop on SIGTERM: they finish the current step, commit and exit.
STOPSIGNAL SIGTERM

ENTRYPOINT ["invoice-batch"]
CMD ["consume"]
