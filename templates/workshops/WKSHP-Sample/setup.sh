#!/bin/sh
# Prepares the workshop folder of student{{ STDID }} ({{ WORKSHOP }}, mode {{ MODE }}).
set -eu
cd "$(dirname "$0")"
mkdir -p work
printf 'student%s\n' '{{ STDID }}' > work/.student
echo "Ready for student{{ STDID }}"
