# The homeserver image (docker-compose.yml runs its servers, init step and scenarios).
#
# Two stages: the first builds a wheel and installs it with its dependencies into a venv;
# the second copies only that venv into a fresh base image and runs as an unprivileged
# user. The base is python:3.11-slim; CI, which reaches no image registry, passes a
# locally built stand-in (tools/compose/base-images.sh) as PYTHON_IMAGE.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/homeserver && /opt/homeserver/bin/pip install --quiet --upgrade pip
COPY pyproject.toml README.md ./
COPY homeserver ./homeserver
# A wheel, not an editable install: the image holds what `pip install homeserver` holds
# (the migrations are package data).
RUN /opt/homeserver/bin/pip wheel --quiet --no-deps --wheel-dir /wheels . \
    && /opt/homeserver/bin/pip install --quiet /wheels/*.whl \
    && /opt/homeserver/bin/homeserver --version

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/homeserver/bin:$PATH
COPY --from=build /opt/homeserver /opt/homeserver
# An unprivileged user owns the data directories (a named volume mounted on /data or
# /testbed starts with this ownership).
RUN groupadd --system --gid 10001 homeserver \
    && useradd --system --uid 10001 --gid homeserver --home-dir /data --shell /usr/sbin/nologin homeserver \
    && mkdir -p /data /testbed && chown homeserver:homeserver /data /testbed && chmod 0700 /data /testbed
USER homeserver
WORKDIR /data

# Client API, federation (TLS), metrics.
EXPOSE 8008 8448 9009
# The client listener's /health (the port of the generated config; change it with yours).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8008/health', timeout=3)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["homeserver"]
CMD ["run", "-c", "/data/homeserver.yaml"]
