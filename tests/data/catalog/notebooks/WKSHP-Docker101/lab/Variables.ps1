$Student = "student{{ STDID }}"
$Password = "{{ PASSSTU }}"
