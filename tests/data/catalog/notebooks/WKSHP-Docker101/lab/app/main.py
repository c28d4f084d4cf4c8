"""The lab application of student{{ STDID }}."""

STUDENT = "student{{ STDID }}"
REGISTRY = "{{ DOCKERHUB }}"
{% if MODE == "CHLG" %}
CHALLENGE = True
{% endif %}
GREETING = "Hello from " + STUDENT + " on {{ BRANDING }}"


