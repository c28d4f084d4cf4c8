{% raw %}
T = '{{ name }}'
{% endraw %}
L = '{{ '{{' }} x {{ '}}' }}'
S = {{ STDID }}
