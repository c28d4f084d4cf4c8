# Not templated: only Variables.ps1 is
Write-Host "{{ STDID }}"
