"""The location: one YAML file per site, and the workshops file beside it.

A location file is a flat mapping of KEY: value, in the format the sites already use
(values may refer to other keys Ansible-style, `{{ KEY }}`; a value tagged `!unsafe`, as in
Ansible, is taken as written, braces and all). wodmail reads its own keys
from it (SMTPPORT, STATEDIR, STUDENTMAX, ...); every other key is a free key handed to the
workshop templates. A secret may be written `env:NAME` or `file:/path` instead of in clear.

The workshops file (key WORKSHOPS, default `workshops.yaml` beside the location) books a
student range for each workshop and says how it behaves:

    WKSHP-Ansible101:
      range: [1, 40]          # students 1..40, inclusive
      varpass: true           # templates get PASSSTU
      reset: false            # a reset workshop keeps the home at CLEANUP, RESET erases it
      ldap: false             # the password is set in LDAP too (needs LDAPURI)
      monoappliance: false    # its scripts get WODRTARGET = IP-<name> (multiappliance: + the
                              # student's place in the range; wodmail.scripts)
      id: 12                  # the registration app's workshop id
      hooks: {reset: ../playbooks/WKSHP-Ansible101/reset.yml}
      variables: {DOCKERHOST: docker.example.com}

The catalog (WORKSHOPDIR) holds one folder per workshop; a folder's `wod.yml`, when it has
one, describes the workshop as the platform this replaces read it (`name`, `description`,
`capacity`, `range: [52, 91]`, `reset`, `ldap`, `varpass`, `active`, `compile`, `duration`,
`priority`, `category`, `location`, ...; keys wodmail does not know are tolerated). Which
workshops this location serves:

- every workshop of the workshops file whose `active` is not false; its settings are its
  wod.yml's, overridden key by key by the workshops file's;
- every catalog folder (WKSHP-Name/ or CHLG-Name/ with a wod.yml) that the workshops file
  does not list, when its wod.yml says `active: true` (or says nothing about it), unless
  CATALOGWORKSHOPS is `listed` (then only listed workshops are served), and unless
  CATALOGLOCATION is set and the wod.yml's `location` names another site. A CHLG-Name
  folder's wod.yml books the challenge; its content is WKSHP-Name's.

A workshop that is served must be right: a malformed value (say `range: [1981-1985]`), a
range outside STUDENTMIN..STUDENTMAX or overlapping another served workshop's, a missing
content folder are `ConfigError`s naming the file and key. What is known but not served
(inactive, for another site, not listed) only gives warnings, as do overlaps involving it, a
`capacity` larger than the range, or a malformed informational key (`duration`,
`category`, ...): `Location.warnings`, logged at start and listed by `wodmail check`.

The catalog's keys of the location: CATALOGWORKSHOPS (`active`, the default, or `listed`),
CATALOGLOCATION (a site name or a list), VARDIR and VARPRIVDIR (the folders of the
`variables_<NAME>.yml` files, as ANSIBLEDIR/PBKDIR and ANSIBLEPRIVDIR/PBKDIR were),
VAULTPWD (decrypts their ansible-vault values; a secret, never given to templates) and
TEMPLATEOPTIONAL (variables a template may use undefined). None is required.

Settings (flags, ranges, active) are read at start: a change to a wod.yml or to the
workshops file takes effect at the next start. The workshop content and the variable files
are read again when they change on disk (wodmail.workshop, wodmail.catalog).

`load_location` reads and checks every file at start-up; every mistake is a `ConfigError`
whose message is one line: "file: key: reason". A reason never carries a secret. `wodmail
check` and `wodmail serve` both start with it.

The package, in the order a location is read:

    reading      the YAML files: duplicate keys, `!unsafe` literals, variable files with vault
    references   `{{ KEY }}` references and `env:`/`file:` secrets
    original     the original backend's files (WODCONFIG) and names (WODUSERMAX -> STUDENTMAX, ...)
    checks       one checker per type of key, and the reader that runs them
    keys         every key wodmail reads, declared once: its type, its default, its doc
    accounts     the host accounts' settings (ACCOUNT*, HOMEACL)
    ldap         the LDAP settings (LDAP*), checked together when LDAPURI is set
    workshops    the record of one workshop, and the workshops file's keys
    entries      one workshop's settings as read, and the checks of each value
    ranges       the booked student ranges: in STUDENTMIN..STUDENTMAX, no overlaps
    booking      the workshops file and the catalog: which workshops this location serves
    parts        the typed parts (smtp, legacy, hub, jobs, homes, signing, ...)
    settings     `Location`, and `build`: the parts made from the checked keys
"""

from __future__ import annotations

import os
from pathlib import Path

from wodmail import resources
from wodmail.errors import ConfigError
from wodmail.location.accounts import AccountSettings, AclEntry
from wodmail.location.checks import Network
from wodmail.location.keys import (
    ACCOUNT_MODES,
    CATALOG_POLICIES,
    HASH_SCHEMES,
    KEYS,
    LOOPBACK,
    MAX_STDID,
    SSH_KEY_TYPES,
    login_defs,
)
from wodmail.location.ldap import LdapSettings
from wodmail.location.original import OriginalSettings, explained, include_files, map_original_names
from wodmail.location.parts import (
    ConnectionSettings,
    HomeSettings,
    HubSettings,
    JobSettings,
    LegacySettings,
    SigningSettings,
    SmtpSettings,
)
from wodmail.location.reading import check_value_types, kind, read_variable_file, read_yaml
from wodmail.location.references import SECRET_KEYS, References, reveal_secrets
from wodmail.location.settings import Location, build
from wodmail.location.workshops import (
    HOOK_VERBS,
    INFORMATIONAL_KEYS,
    VARIABLES_FILE,
    WOD_FILE,
    WORKSHOP_KEYS,
    Workshop,
)

LIST_KEYS = frozenset({"LEGACYPEERS", "TRUSTEDPEERS", "TRUSTEDSENDERS", "SIGNINGKEYS", "LOCALPEERUSERS"})
"""wodmail's own keys that take a list (free keys may hold lists too)."""

__all__ = [
    "ACCOUNT_MODES",
    "CATALOG_POLICIES",
    "HASH_SCHEMES",
    "HOOK_VERBS",
    "INFORMATIONAL_KEYS",
    "KEYS",
    "LIST_KEYS",
    "LOOPBACK",
    "MAX_STDID",
    "SECRET_KEYS",
    "SSH_KEY_TYPES",
    "VARIABLES_FILE",
    "WOD_FILE",
    "WORKSHOP_KEYS",
    "AccountSettings",
    "AclEntry",
    "ConnectionSettings",
    "HomeSettings",
    "HubSettings",
    "JobSettings",
    "LdapSettings",
    "LegacySettings",
    "Location",
    "Network",
    "OriginalSettings",
    "SigningSettings",
    "SmtpSettings",
    "Workshop",
    "load_location",
    "login_defs",
    "read_variable_file",
]


def load_location(file: Path | str | None = None) -> Location:
    """Read and check a location file and its workshops file.

    `file` None means the embedded default, locations/local.yaml. Raises `ConfigError`
    ("file: key: reason", one line) on the first mistake found.
    """
    path = Path(file) if file is not None else resources.default_location_file()
    path = Path(os.path.expanduser(path)).absolute()
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(path, None, "the file is empty: expected KEY: value lines")
    if not isinstance(raw, dict):
        raise ConfigError(path, None, f"expected a mapping of KEY: value, found {kind(raw)}")
    entries = check_value_types(path, raw)
    included = include_files(path, entries)  # WODCONFIG: the original backend's files
    original: OriginalSettings | None = None
    try:
        resolved = References(path, {**included.entries, **entries}).resolve_all()
        revealed, original = map_original_names(path, reveal_secrets(path, resolved), included)
        return build(path, revealed, original)
    except ConfigError as exc:
        raise explained(exc, path, included, original) from None
