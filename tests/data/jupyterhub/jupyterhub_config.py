"""JupyterHub configuration for wodmail's tests (tests/jupyterhub.py starts the hub with it).

Everything that changes from one run to the next (ports, folders, limits, users) comes
from the JSON file named by $WODMAIL_TEST_HUB_SETTINGS; the service's API token comes from
$WODMAIL_TEST_HUB_TOKEN, so that it appears in no file and no process argument.

The hub and its proxy listen on 127.0.0.1 only. Students' servers are started by
SimpleLocalProcessSpawner (no system users needed) running tiny_server.py, which answers
the hub's readiness check instead of a real Jupyter server.
"""

import json
import os

import jupyterhub

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)

settings = json.loads(open(os.environ["WODMAIL_TEST_HUB_SETTINGS"], encoding="utf-8").read())
root = settings["root"]

# -- where it listens: the proxy's public port (JPHUBAPISRV), its API port, the hub --------
c.JupyterHub.bind_url = f"http://127.0.0.1:{settings['proxy_port']}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{settings['hub_port']}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings['proxy_api_port']}"
c.ConfigurableHTTPProxy.command = [settings["proxy_command"]]
c.ConfigurableHTTPProxy.pid_file = os.path.join(root, "proxy.pid")

# -- state: all under the test's temporary folder ----------------------------------------
c.JupyterHub.db_url = "sqlite:///" + os.path.join(root, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(root, "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = os.path.join(root, "jupyterhub.pid")
c.JupyterHub.cleanup_servers = False  # tests/jupyterhub.py ends them all at once, faster
c.JupyterHub.cleanup_proxy = True

# -- who: students allowed up front; nobody logs in through a browser, except with "pam":
# then students log in with their host account's password (PAMAuthenticator, service "login",
# as a Jupyter host of the platform does; tests/test_accounts.py runs this hub as root) -----
c.JupyterHub.authenticator_class = settings.get("authenticator", "null")
c.PAMAuthenticator.open_sessions = False
c.Authenticator.allowed_users = set(settings["allowed_users"])

# -- wodmail's service token, with the scopes wodmail needs ------------------------------
c.JupyterHub.services = [{"name": "wodmail", "api_token": os.environ["WODMAIL_TEST_HUB_TOKEN"]}]
c.JupyterHub.load_roles = [{"name": "wodmail", "scopes": settings["scopes"], "services": ["wodmail"]}]

# -- the students' servers ----------------------------------------------------------------
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = os.path.join(root, "homes", "{username}")
c.Spawner.cmd = [settings["python"], "-I", "-S", settings["tiny_server"]]
c.Spawner.environment = {"TINY_SERVER_DIR": root, "TINY_HUB_VERSION": jupyterhub.__version__}
c.Spawner.start_timeout = settings["start_timeout"]
c.Spawner.http_timeout = settings["http_timeout"]
c.Spawner.interrupt_timeout = 2
c.Spawner.term_timeout = 2
c.Spawner.poll_interval = 3600  # the tests stop servers through the API; no need to poll

# -- limits: the concurrent spawn limit answers 429 with Retry-After ----------------------
c.JupyterHub.concurrent_spawn_limit = settings["concurrent_spawn_limit"]
c.JupyterHub.active_server_limit = 0
# JupyterHub.spawn_throttle_retry_range (the Retry-After range, 30..60 s by default) is not
# tagged config=True, so it is set where the hub's handlers read it: the tornado settings.
c.JupyterHub.tornado_settings = {
    "slow_spawn_timeout": settings["slow_spawn_timeout"],
    "slow_stop_timeout": settings["slow_stop_timeout"],
    "spawn_throttle_retry_range": tuple(settings["spawn_throttle_retry_range"]),
}
c.JupyterHub.log_level = settings.get("log_level", "INFO")
