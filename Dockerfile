# The homeserver image used by docker-compose.yml (servers, the init step and scenarios).
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY homeserver ./homeserver
# The migrations are package data (homeserver/storage/schema/), so a plain install has them.
RUN pip install .

# Client API, federation (TLS), metrics.
EXPOSE 8008 8448 9009
STOPSIGNAL SIGTERM
ENTRYPOINT []
CMD ["homeserver", "--help"]
