#!/bin/sh
# MDA for fetchmail and mpop: writes the message on stdin, unchanged, to
# DIR/001.eml, DIR/002.eml, ... (the next free number). Both clients deliver
# one message at a time, so numbering follows delivery order.
#
#   mda-to-dir.sh DIR
set -eu
dir=$1
n=$(find "$dir" -maxdepth 1 -name '*.eml' | wc -l)
f=$(printf '%s/%03d.eml' "$dir" $((n + 1)))
cat >"$f.tmp"
mv "$f.tmp" "$f"
