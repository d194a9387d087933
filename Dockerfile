# The one image every patchaas service runs (worker, beat, migrations, API).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY orchestrator orchestrator
COPY workers workers
COPY schemas schemas
COPY migrations migrations
RUN pip install --no-cache-dir -e .
ENTRYPOINT ["patchaas"]
