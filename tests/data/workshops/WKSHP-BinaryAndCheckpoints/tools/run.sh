#!/bin/sh
echo student{{ STDID }}
