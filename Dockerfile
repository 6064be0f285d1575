# One image for every service of a compose lab: the hypervisor, the bridge
# service, Domain-0, every domU the docker launcher starts, and mosquitto.
#
#   docker build -t xenlab:latest .
#
# BASE is any Debian-based Python 3.11+ image. WHEELHOUSE names a directory
# of the build context; when it holds wheels, pip installs from it alone
# (no index), for builders without PyPI (tools/ci-docker.sh).
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG WHEELHOUSE=docker/no-wheelhouse
LABEL org.opencontainers.image.title=xenlab
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    DEBIAN_FRONTEND=noninteractive

# A base that already has them (tools/ci-docker.sh debootstraps one) needs no
# apt, so this builds where the image cannot reach a Debian mirror.
RUN set -e; missing=""; \
    for p in mosquitto libatomic1 iproute2 xenstore-utils; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done; \
    python3 -m venv --help >/dev/null 2>&1 || missing="$missing python3-venv"; \
    if [ -n "$missing" ]; then \
        apt-get update && apt-get install -y --no-install-recommends $missing && rm -rf /var/lib/apt/lists/*; \
    fi

RUN python3 -m venv /opt/xenlab
ENV PATH=/opt/xenlab/bin:$PATH

# Dependencies first, from pyproject.toml alone, so that a source change
# rebuilds only the last layers.
COPY ${WHEELHOUSE}/ /tmp/wheelhouse/
COPY pyproject.toml README.md /src/
RUN set -e; \
    if ls /tmp/wheelhouse/*.whl >/dev/null 2>&1; then \
        export PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheelhouse; \
    fi; \
    mkdir -p /src/services/xenlab && touch /src/services/xenlab/__init__.py; \
    pip install -q "/src[web]" && pip uninstall -q -y xenlab

COPY services /src/services
RUN set -e; \
    if ls /tmp/wheelhouse/*.whl >/dev/null 2>&1; then \
        export PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheelhouse; \
    fi; \
    pip install -q --no-deps /src && rm -rf /src /tmp/wheelhouse && xenlab --help >/dev/null

COPY docker/mosquitto.conf /etc/xenlab/mosquitto.conf
COPY docker/lab/ /etc/xenlab/lab/
COPY docker/create-lab.sh /usr/local/bin/xenlab-create-lab

# The rundir holds Domain-0's secret: 0700, or every xenlab command refuses
# it. A new rundir volume takes this directory's mode.
RUN install -d -m 0700 /run/xenlab
ENV XENLAB_RUNDIR=/run/xenlab
WORKDIR /run/xenlab
ENTRYPOINT ["xenlab"]
CMD ["--help"]
