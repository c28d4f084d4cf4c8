# looks a value up as a key: the error would name the key
x = '{{ {}[PASSSTU] }}'
