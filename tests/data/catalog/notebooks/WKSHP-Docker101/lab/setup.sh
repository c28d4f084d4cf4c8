#!/bin/bash
# Prepares the lab of student{{ STDID }}
set -e
export LAB_USER=student{{ STDID }}
docker network create "lab-${LAB_USER}" || true
echo "done for $(whoami) in {{ WORKSHOP }} ({{ MODE }})"
