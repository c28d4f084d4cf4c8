a{{ NOTHING }}b
{% if true %}
X
{% endif %}


