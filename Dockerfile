# syntax=docker/dockerfile:1
# The service as a small image: the wheel built from this checkout, installed into a virtualenv,
# run as a non-root user. Configure it as the original: environment variables (SITE_NAME,
# AUTH_URL, API_KEY, REDIS_URL, PORT, ...) or config.yml / sites.yml mounted into /app.
# SQLite keeps its file on the /app/data volume. tests/test_container.py builds this layout
# without Docker (see README, "Docker").

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
# requirements.lock pins every dependency with its hashes (./dev lock makes it from
# pyproject.toml): the image gets what CI tested, or the build fails.
COPY requirements.lock pyproject.toml README.md LICENSE ./
# socketio_webservice/ links to the four layers' folders: all five are needed.
COPY socketio_webservice socketio_webservice
COPY actors actors
COPY transport transport
COPY storage storage
COPY webservice webservice
RUN python -m venv /venv \
    && /venv/bin/pip install --no-cache-dir --upgrade "pip>=24" \
    && /venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock \
    && /venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /venv/bin/pip install --no-cache-dir --no-deps /wheels/*.whl \
    && /venv/bin/pip check

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin webservice \
    && mkdir -p /app/data \
    && chown webservice /app/data
COPY --from=build /venv /venv
COPY config.yml /app/config.yml
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SQLITE_PATH=/app/data/webservice.sqlite3 \
    PORT=1337
WORKDIR /app
USER 10001
VOLUME ["/app/data"]
EXPOSE 1337
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '1337') + '/livez', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["socketio-webservice"]
