#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# stage.sh FILE NAME CMD...: runs CMD and appends "NAME SECONDS ok|failed"
# to FILE, so that make test reports the wall time of each of its stages.
set -u
file=$1 name=$2
shift 2
start=$(date +%s.%N)
"$@"
rc=$?
end=$(date +%s.%N)
res=ok
[ "$rc" = 0 ] || res=failed
printf '%s\t%.1fs\t%s\n' "$name" "$(echo "$end - $start" | bc)" "$res" >>"$file"
exit "$rc"
