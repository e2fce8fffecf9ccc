# archiver: slim Python base, PostgreSQL client programs (pg_dump/pg_restore), non-root user.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client-15 \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 10001 --create-home --home-dir /home/archiver archiver
WORKDIR /app
COPY pyproject.toml README.md ./
COPY archiver ./archiver
RUN pip install --no-cache-dir . && rm -rf /root/.cache

USER 10001
ENV ARCHIVER_POLICIES=/etc/archiver/policies
ENTRYPOINT ["archiver"]
CMD ["--help"]
