#!/usr/bin/env bash
# aiprod container entrypoint: apply database migrations, then exec the role's command.
#
#   api [ARGS...]     migrations, then `aiprod serve --host $AIPROD_HOST --port $AIPROD_PORT
#                     --no-worker ARGS...` (the API is stateless; workers run elsewhere)
#   worker [ARGS...]  `aiprod worker ARGS...` (migrations too if AIPROD_RUN_MIGRATIONS=1)
#   migrate           migrations only, then exit
#   -* (flags)        arguments for the default role ($AIPROD_ROLE, else api)
#   anything else     exec'd as given, e.g. `aiprod keys create --name acme` or `bash`
#
# Environment: AIPROD_BIN (default `aiprod`), AIPROD_HOST (0.0.0.0), AIPROD_PORT (8000),
# AIPROD_RUN_MIGRATIONS (1 for api, 0 for worker), AIPROD_DB_WAIT_SECONDS (60): how long to keep
# retrying migrations while the database starts, AIPROD_DB_RETRY_INTERVAL (2 seconds).
set -euo pipefail

AIPROD_BIN=${AIPROD_BIN:-aiprod}

log() { echo "docker-entrypoint: $*" >&2; }

run_migrations() {
    local wait_s=${AIPROD_DB_WAIT_SECONDS:-60}
    local interval=${AIPROD_DB_RETRY_INTERVAL:-2}
    local deadline=$((SECONDS + wait_s))
    local attempt=1
    log "applying database migrations (aiprod db upgrade)"
    until "$AIPROD_BIN" db upgrade; do
        if ((SECONDS >= deadline)); then
            log "database migrations failed after ${attempt} attempt(s) over ${wait_s}s;" \
                "check AIPROD_DATABASE_URL and that the database is up and reachable"
            exit 1
        fi
        log "migrations failed (attempt ${attempt}); retrying in ${interval}s"
        sleep "$interval"
        attempt=$((attempt + 1))
    done
}

role=${1:-${AIPROD_ROLE:-api}}
if [[ $# -gt 0 && $1 == -* ]]; then
    role=${AIPROD_ROLE:-api}
elif [[ $# -gt 0 ]]; then
    shift
fi

case "$role" in
    api)
        if [[ ${AIPROD_RUN_MIGRATIONS:-1} == 1 ]]; then run_migrations; fi
        log "starting the API on ${AIPROD_HOST:-0.0.0.0}:${AIPROD_PORT:-8000}"
        exec "$AIPROD_BIN" serve --host "${AIPROD_HOST:-0.0.0.0}" --port "${AIPROD_PORT:-8000}" \
            --no-worker "$@"
        ;;
    worker)
        if [[ ${AIPROD_RUN_MIGRATIONS:-0} == 1 ]]; then run_migrations; fi
        log "starting a worker"
        exec "$AIPROD_BIN" worker "$@"
        ;;
    migrate)
        run_migrations
        log "migrations applied"
        ;;
    *)
        exec "$role" "$@"
        ;;
esac
