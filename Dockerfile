# The homeserver image used by docker-compose.yml (servers, the init step and scenarios).
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY homeserver ./homeserver
COPY migrations ./migrations
# Editable install: the migrations are read from /app/migrations next to the package.
RUN pip install -e .

# Client API, federation (TLS), metrics.
EXPOSE 8008 8448 9009
STOPSIGNAL SIGTERM
ENTRYPOINT []
CMD ["homeserver", "--help"]
