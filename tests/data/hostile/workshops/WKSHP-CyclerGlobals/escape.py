# A workshop file that tries to reach Python's internals through a Jinja global.
print("{{ cycler.__init__.__globals__ }}")
