"""What a location turns into: the services the verbs use, and the daemon's own settings.

Both processes of `wodmail serve` build from here: the doors' process once at start-up, to
refuse a wrong key before it listens; the jobs process to work with.
"""

from __future__ import annotations

import logging

from wodmail.accounts import Accounts
from wodmail.homes import Homes
from wodmail.hub import Hub
from wodmail.location import Location
from wodmail.playbooks import Playbooks
from wodmail.regapp import RegistrationApp
from wodmail.services import Directory, Services
from wodmail.transport import HttpClient, Requester
from wodmail.workshop import Renderer


def secret_values(location: Location) -> list[str]:
    """The values of the location's secret keys (SIGNINGKEYS holds several)."""
    return list(location.withheld)


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
        renderer=Renderer.for_location(location, code_cache=location.state_dir / "template-cache"),
        playbooks=Playbooks(location.state_dir, withheld=secret_values(location)),
        hub=hub,
        app=app,
        directory=directory,
        accounts=Accounts.from_location(location, on_created=homes.forget_account),
    )
    return services, app


async def check_settings(location: Location) -> None:
    """What the jobs process will build from the location (its keys were checked when it was
    loaded), built now: a file that cannot be used stops the start."""
    if location.ldap_uri:
        from wodmail.directory import LdapDirectory  # imports ldap3: only where there is LDAP

        await LdapDirectory.from_location(location).aclose()
    async with HttpClient() as client:  # opens no connection: the services are only built
        services, _ = build_services(location, client)
    services.homes.check()
    if services.accounts is not None:
        services.accounts.check()
        logging.getLogger(__name__).info("%s", services.accounts.describe())
