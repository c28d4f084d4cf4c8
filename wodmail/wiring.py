"""What a location turns into: the services the verbs use, and the daemon's own settings.

Both processes of `wodmail serve` build from here: the doors' process once at start-up, to
refuse a wrong key before it listens; the jobs process to work with.
"""

from __future__ import annotations

import logging

import httpx

from wodmail.accounts import Accounts
from wodmail.errors import ConfigError
from wodmail.homes import Homes
from wodmail.hub import Hub
from wodmail.location import SECRET_KEYS, Location
from wodmail.playbooks import Playbooks
from wodmail.regapp import RegistrationApp
from wodmail.services import Directory, Services
from wodmail.transport import Requester
from wodmail.workshop import Renderer


def seconds(location: Location, key: str, default: float) -> float:
    """A duration key of the location (seconds, > 0), or its default."""
    value = location.values.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(location.file, key, "must be a positive number of seconds")
    return float(value)


def jobs_nice(location: Location) -> int:
    """JOBSNICE: how much lower the jobs process's CPU priority is than the doors' (0..19)."""
    value = location.values.get("JOBSNICE", 10)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 19:
        raise ConfigError(location.file, "JOBSNICE", "must be a whole number from 0 to 19")
    return value


def secret_values(location: Location) -> list[str]:
    """The values of the location's secret keys (SIGNINGKEYS holds several, in a list or tuple)."""
    found: list[str] = []
    for key in SECRET_KEYS:
        value = location.values.get(key)
        items = value if isinstance(value, list | tuple | set | frozenset) else [value]
        found += [str(item) for item in items if item]
    return found


def build_services(
    location: Location, client: Requester, directory: Directory | None = None
) -> tuple[Services, RegistrationApp | None]:
    app = None
    if location.api_endpoint:
        app = RegistrationApp(location.api_endpoint, location.api_user or "", location.api_password or "", client)
    hub = Hub.from_location(location, client)
    homes = Homes.from_location(location)
    services = Services(
        location=location,
        homes=homes,
        renderer=Renderer(
            optional_variables=location.optional_variables, code_cache=location.state_dir / "template-cache"
        ),
        playbooks=Playbooks(location.state_dir, withheld=secret_values(location)),
        hub=hub,
        app=app,
        directory=directory,
        accounts=Accounts.from_location(location, on_created=homes.forget_account),
    )
    return services, app


async def check_settings(location: Location) -> None:
    """Every key the jobs process will read, checked now: a wrong one stops the start."""
    seconds(location, "CALLBACKBACKOFFMAX", 300)
    seconds(location, "RETRYFOR", 900)
    seconds(location, "RETRYBACKOFFMAX", 300)
    jobs_nice(location)
    if location.ldap_uri:
        from wodmail.directory import LdapDirectory  # imports ldap3: only where there is LDAP

        await LdapDirectory.from_location(location).aclose()
    async with httpx.AsyncClient() as client:
        services, _ = build_services(location, client)
    services.homes.check()
    if services.accounts is not None:
        services.accounts.check()
        logging.getLogger(__name__).info("%s", services.accounts.describe())
