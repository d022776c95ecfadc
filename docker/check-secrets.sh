#!/bin/sh
# The entrypoint wrapper of every service of compose.yaml that takes a password:
#
#   check-secrets.sh NAME... -- COMMAND [ARG...]
#
# refuses to start (exit 1, one line naming the variable) when a variable NAME is unset, empty
# or still the placeholder of .env.example ("change-me..."), then runs the service's own
# command in its place (exec: it stays PID 1 and gets the container's signals). Why here and
# not in compose.yaml: compose's ${VAR:?} catches an unset or empty value only; it cannot
# compare one. The value itself is never printed.
set -eu

while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    name=$1
    shift
    case $name in
        "" | [0-9]* | *[!A-Za-z0-9_]*)
            echo "check-secrets.sh: '$name' is not a variable name" >&2
            exit 2
            ;;
    esac
    # The name is checked above: eval reads the variable it names, nothing else.
    eval "value=\${$name-}"
    case $value in
        "")
            echo "error: $name is not set: set it in docker/.env" >&2
            exit 1
            ;;
        change-me*)
            echo "error: $name is still the .env.example placeholder: set a real password in docker/.env" >&2
            exit 1
            ;;
    esac
done
if [ "$#" -lt 2 ]; then
    echo "check-secrets.sh: usage: check-secrets.sh NAME... -- COMMAND [ARG...]" >&2
    exit 2
fi
shift
exec "$@"
