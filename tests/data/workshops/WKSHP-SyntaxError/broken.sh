#!/bin/sh
echo ok
{% if STDID %}
echo never closed
