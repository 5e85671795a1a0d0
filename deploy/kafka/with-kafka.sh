#!/usr/bin/env bash
# Run a command with a local Kafka broker: start it (or reuse KAIROS_KAFKA_BOOTSTRAP / a running one),
# export KAIROS_KAFKA_BOOTSTRAP for the command, and stop the broker afterwards if this script started it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
started_here=0
if [ -z "${KAIROS_KAFKA_BOOTSTRAP:-}" ]; then
  if ! bash "$here/kafka.sh" status >/dev/null 2>&1; then started_here=1; fi
  KAIROS_KAFKA_BOOTSTRAP="$(bash "$here/kafka.sh" start)"
  export KAIROS_KAFKA_BOOTSTRAP
fi
cleanup() { if [ "$started_here" = 1 ]; then bash "$here/kafka.sh" stop || true; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM
echo "[kafka] bootstrap $KAIROS_KAFKA_BOOTSTRAP" >&2
"$@"
