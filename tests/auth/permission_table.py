"""The permission matrix: what every role may do on every route (XNAT's rules, guest access off).

``tests/auth/test_permission_matrix.py`` walks ``app.routes`` and fails for any route+method missing
here, so **adding a route means adding one line to CASES**. Each case names the route exactly as
registered (path template and method) and the outcome for each role, in ``ROLES`` order:

    anonymous, nonmember (outsider), collaborator (collab), member, owner, admin

An outcome is a status code the role must get exactly (401 not logged in, 404 a private project it
cannot see, 403 visible but not allowed, or any other code), or ``OK`` (a 2xx/3xx, or one of the
case's ``ok`` codes). Shorthands below cover XNAT's usual rules.

The world every call runs in is built by :func:`seed`: site admin ``admin``; users ``owner``,
``member``, ``collab`` (groups of private project ``P1``) and ``outsider``; in ``P1`` subject ``S1``,
experiment ``E1`` (``xnat:ctSessionData``), scan ``1`` with a ``DICOM`` resource holding ``1.dcm``, and a
project resource ``NOTES``; events, DICOM and container objects (see the ``_seed_*`` functions). URLs
are the route with ``{name}`` replaced from ``SAMPLE`` and the seed's values (or a case's explicit
``url``, which may use the same ``{names}``). A catch-all route (``/data/projects/{rest:path}``) has
several cases, one per URL; every registered route needs at least one.

The seed runs once per backend; each call gets a copy of it. For non-GET calls every role expected to
succeed gets its own fresh copy, so one role's change never decides what the next sees.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

ROLES = ("anonymous", "nonmember", "collaborator", "member", "owner", "admin")
#: which user plays each role (None: no credentials)
ROLE_USERS = {"anonymous": None, "nonmember": "outsider", "collaborator": "collab", "member": "member",
              "owner": "owner", "admin": "admin"}
OK = "ok"

PUBLIC = (OK, OK, OK, OK, OK, OK)
ANY_USER = (401, OK, OK, OK, OK, OK)
ADMIN_ONLY = (401, 403, 403, 403, 403, OK)
#: project data: read by collaborators; create/edit by members; delete and manage by owners
P_READ = (401, 404, OK, OK, OK, OK)
P_WRITE = (401, 404, 403, OK, OK, OK)
P_DELETE = (401, 404, 403, 403, OK, OK)
P_MANAGE = P_DELETE
#: a call about user ``collab`` that only that user themself and admins may make
SELF_COLLAB = (401, 403, OK, 403, 403, OK)

#: values for ``{placeholders}`` in route templates (``seed`` may add more, e.g. token aliases)
SAMPLE: dict[str, str] = {
    "project_id": "P1", "project": "P1", "subject": "S1", "subject_id": "S1", "experiment": "E1",
    "experiment_id": "E1", "session": "E1", "scan": "1", "scan_id": "1", "resource": "DICOM",
    "resource_id": "DICOM", "file": "1.dcm", "path": "1.dcm", "username": "collab", "user_ids": "outsider",
    "group": "Members", "role": "DataManager", "flag": "true",
}


#: calls on objects the seed does not create (quarantine entries, prearchive sessions): the roles that
#: get past the permission check are answered 404 (so for them only "not refused" is checked)
NOT_SEEDED_ADMIN = (401, 403, 403, 403, 403, 404)
NOT_SEEDED_P_WRITE = (401, 404, 403, 404, 404, 404)
EMPTY_ZIP = b"PK\x05\x06" + b"\x00" * 18
LAUNCH_URL = "/xapi/wrappers/{wrapper_id}/root/scan/launch"
LAUNCH_BODY = {"scan": "/archive/experiments/{experiment_xnat_id}/scans/1"}

PROJECT_XML = (b'<xnat:Project ID="P3" secondary_ID="hub-3" xmlns:xnat="http://nrg.wustl.edu/xnat">'
               b"<xnat:name>Project three</xnat:name></xnat:Project>")
#: project data a collaborator may read (URLs under /data/projects; also tried under /data/archive)
READ_URLS: list[tuple[str, dict[str, str] | None]] = [
    ("/data/projects/P1", {"format": "json"}),
    ("/data/projects/P1", {"format": "xml"}),
    ("/data/projects/P1/subjects", {"format": "json"}),
    ("/data/projects/P1/subjects/S1", {"format": "json"}),
    ("/data/projects/P1/experiments", {"format": "json"}),
    ("/data/projects/P1/subjects/S1/experiments/E1", {"format": "json"}),
    ("/data/projects/P1/experiments/E1/scans", {"format": "json"}),
    ("/data/projects/P1/experiments/E1/scans/1/resources", {"format": "json"}),
    ("/data/projects/P1/experiments/E1/scans/1/resources/DICOM/files", {"format": "json"}),
    ("/data/projects/P1/experiments/E1/scans/1/resources/DICOM/files/1.dcm", None),
    ("/data/projects/P1/experiments/E1/scans/1/resources/DICOM/files", {"format": "zip"}),
    ("/data/projects/P1/experiments/E1/scans/ALL/resources/DICOM/files", {"format": "zip"}),
    ("/data/projects/P1/resources/NOTES/files/readme.txt", None),
    ("/data/projects/P1/prearchive_code", None),
]

SCAN_EVENT = "org.nrg.xnat.eventservice.events.ScanEvent"
LOGGING_ACTION_KEY = ("org.nrg.xnat.eventservice.actions.EventServiceLoggingAction:"
                      "org.nrg.xnat.eventservice.actions.EventServiceLoggingAction")


def _sub_model(name: str, projects: list[str]) -> dict[str, Any]:
    return {"name": name, "active": True, "action-key": LOGGING_ACTION_KEY,
            "event-filter": {"event-type": SCAN_EVENT, "project-ids": projects, "status": "CREATED"}}


@dataclass(frozen=True)
class Case:
    method: str
    route: str
    expect: tuple[Any, ...]
    url: str | None = None
    params: dict[str, str] | None = None
    json: Any = None
    data: dict[str, str] | None = None
    content: bytes | None = None
    headers: dict[str, str] | None = None
    #: further statuses that count as "allowed" for OK outcomes (e.g. 400 for a deliberately empty body)
    ok: frozenset[int] = field(default_factory=frozenset)
    note: str = ""

    def __post_init__(self) -> None:
        assert len(self.expect) == len(ROLES), f"{self.method} {self.route}: one outcome per role"

    @property
    def key(self) -> tuple[str, str]:
        """The route this case covers (catch-all routes have several cases, one per URL)."""
        return (self.method, self.route)

    @property
    def ident(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in sorted((self.params or {}).items()))
        return f"{self.method} {self.url or self.route}{'?' + query if query else ''}"

    def concrete_url(self, sample: dict[str, str]) -> str:
        if self.url is not None:
            return self.url.format(**sample)

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in sample:
                raise KeyError(f"{self.method} {self.route}: no SAMPLE value for {{{name}}}; "
                               "give the case a url")
            return sample[name]

        return re.sub(r"\{(\w+)(?::\w+)?\}", fill, self.route)


CASES: list[Case] = [
    # ------------------------------------------------------------------ FastAPI's own (app.py)
    Case("GET", "/xapi/openapi.json", PUBLIC, note="FastAPI default; XNAT's swagger needs a login"),
    Case("GET", "/xapi/docs", PUBLIC, note="FastAPI default"),
    Case("GET", "/docs/oauth2-redirect", PUBLIC, note="FastAPI default"),
    # ------------------------------------------------------------------ auth/routes.py: sessions
    Case("POST", "/data/services/auth", PUBLIC, data={"username": "outsider", "password": "{password}"}),
    Case("PUT", "/data/services/auth", PUBLIC, data={"username": "outsider", "password": "{password}"}),
    Case("GET", "/data/JSESSION", ANY_USER),
    Case("DELETE", "/data/JSESSION", PUBLIC, note="logging out always succeeds"),
    Case("GET", "/data/auth", ANY_USER),
    Case("GET", "/set-password", PUBLIC, note="the static page a set-password link opens"),
    Case("POST", "/xapi/users/{username}/set-password", (400,) * 6,
         json={"alias": "{alias}", "secret": "wrong", "password": "Whatever-1"},
         note="no login needed; the single-use token is the credential (a wrong secret is 400 for all)"),
    # ------------------------------------------------------------------ tokens
    Case("GET", "/data/services/tokens/issue", ANY_USER),
    Case("GET", "/data/services/tokens/issue/user/{username}", SELF_COLLAB),
    Case("GET", "/data/services/tokens/show", ANY_USER),
    Case("GET", "/data/services/tokens/show/user/{username}", SELF_COLLAB),
    Case("GET", "/data/services/tokens/validate/{alias}/{secret}", SELF_COLLAB),
    Case("GET", "/data/services/tokens/invalidate/{alias}", SELF_COLLAB),
    Case("GET", "/data/services/tokens/invalidate/{alias}/{secret}", SELF_COLLAB),
    # ------------------------------------------------------------------ users
    Case("GET", "/data/users", ANY_USER),
    Case("GET", "/xapi/users", ANY_USER),
    Case("POST", "/xapi/users", ADMIN_ONLY, json={"username": "newuser", "email": "n@example.org"}),
    Case("GET", "/xapi/users/profiles", ANY_USER),
    Case("GET", "/xapi/users/{username}", SELF_COLLAB),
    Case("PUT", "/xapi/users/{username}", SELF_COLLAB, json={"firstName": "Changed"}),
    Case("GET", "/xapi/users/{username}/enabled", SELF_COLLAB),
    Case("PUT", "/xapi/users/{username}/enabled/{flag}", ADMIN_ONLY),
    Case("GET", "/xapi/users/{username}/verified", SELF_COLLAB),
    Case("PUT", "/xapi/users/{username}/verified/{flag}", ADMIN_ONLY),
    Case("GET", "/xapi/users/{username}/roles", SELF_COLLAB),
    Case("PUT", "/xapi/users/{username}/roles", ADMIN_ONLY, json=["DataManager"]),
    Case("DELETE", "/xapi/users/{username}/roles", ADMIN_ONLY, json=["DataManager"]),
    Case("PUT", "/xapi/users/{username}/roles/{role}", ADMIN_ONLY),
    Case("DELETE", "/xapi/users/{username}/roles/{role}", ADMIN_ONLY),
    Case("GET", "/xapi/users/{username}/groups", SELF_COLLAB),
    Case("PUT", "/xapi/users/{username}/groups/{group}", P_MANAGE,
         url="/xapi/users/outsider/groups/P1_member"),
    Case("DELETE", "/xapi/users/{username}/groups/{group}", (401, 404, OK, 403, OK, OK),
         url="/xapi/users/collab/groups/P1_collaborator",
         note="a user may leave a group themself (as XNAT); others need to own the project"),
    # ------------------------------------------------------------------ project membership
    Case("GET", "/data/projects/{project_id}/users", P_READ),
    Case("GET", "/data/archive/projects/{project_id}/users", P_READ),
    Case("PUT", "/data/projects/{project_id}/users/{group}/{user_ids}", P_MANAGE),
    Case("PUT", "/data/archive/projects/{project_id}/users/{group}/{user_ids}", P_MANAGE),
    Case("DELETE", "/data/projects/{project_id}/users/{group}/{user_ids}", P_MANAGE,
         url="/data/projects/P1/users/Members/member"),
    Case("DELETE", "/data/archive/projects/{project_id}/users/{group}/{user_ids}", P_MANAGE,
         url="/data/archive/projects/P1/users/Members/member"),
    Case("GET", "/xapi/access/projects", ANY_USER),
    # ------------------------------------------------------------------ events/routes.py (Event Service)
    Case("POST", "/xapi/events/subscription", ADMIN_ONLY, json=_sub_model("new-site-sub", [])),
    Case("POST", "/xapi/projects/{project_id}/events/subscription", P_MANAGE,
         json=_sub_model("new-p1-sub", ["P1"])),
    Case("POST", "/xapi/events/subscription/filter/validate", ANY_USER, content=b'@.modality == "CT"'),
    Case("GET", "/xapi/events/subscriptions", ADMIN_ONLY),
    Case("GET", "/xapi/projects/{project_id}/events/subscriptions", P_MANAGE),
    Case("GET", "/xapi/events/subscription/{sub_id}", ADMIN_ONLY,
         url="/xapi/events/subscription/{site_sub_id}"),
    Case("PUT", "/xapi/events/subscription/{sub_id}", ADMIN_ONLY,
         url="/xapi/events/subscription/{site_sub_id}", json={"active": False}),
    Case("DELETE", "/xapi/events/subscription/{sub_id}", ADMIN_ONLY,
         url="/xapi/events/subscription/{site_sub_id}"),
    Case("POST", "/xapi/events/subscription/{sub_id}/activate", ADMIN_ONLY,
         url="/xapi/events/subscription/{site_sub_id}/activate"),
    Case("POST", "/xapi/events/subscription/{sub_id}/deactivate", ADMIN_ONLY,
         url="/xapi/events/subscription/{site_sub_id}/deactivate"),
    Case("GET", "/xapi/projects/{project_id}/events/subscription/{sub_id}", P_MANAGE),
    Case("PUT", "/xapi/projects/{project_id}/events/subscription/{sub_id}", P_MANAGE, json={"active": False}),
    Case("DELETE", "/xapi/projects/{project_id}/events/subscription/{sub_id}", P_MANAGE),
    Case("POST", "/xapi/projects/{project_id}/events/subscription/{sub_id}/activate", P_MANAGE),
    Case("POST", "/xapi/projects/{project_id}/events/subscription/{sub_id}/deactivate", P_MANAGE),
    Case("GET", "/xapi/events/events", ANY_USER),
    Case("GET", "/xapi/projects/{project_id}/events/events", P_READ),
    Case("GET", "/xapi/events/event", ANY_USER, params={"event-type": SCAN_EVENT}),
    Case("GET", "/xapi/events/actions", ADMIN_ONLY),
    Case("GET", "/xapi/events/actionsbyevent", ADMIN_ONLY, params={"event-type": SCAN_EVENT}),
    Case("GET", "/xapi/events/allactions", ANY_USER),
    Case("GET", "/xapi/events/action", ANY_USER, params={"actionkey": LOGGING_ACTION_KEY}),
    Case("GET", "/xapi/projects/{project_id}/events/actions", P_MANAGE),
    Case("GET", "/xapi/projects/{project_id}/events/actionsbyevent", P_MANAGE,
         params={"event-type": SCAN_EVENT}),
    Case("GET", "/xapi/events/prefs", ANY_USER),
    Case("PUT", "/xapi/events/prefs", ADMIN_ONLY, json={"enabled": True}),
    Case("GET", "/xapi/events/delivered/count", ADMIN_ONLY),
    Case("GET", "/xapi/events/delivered", ADMIN_ONLY),
    Case("POST", "/xapi/events/delivered", ADMIN_ONLY, json={}),
    Case("GET", "/xapi/events/delivered/{delivery_id}", ADMIN_ONLY),
    Case("GET", "/xapi/projects/{project_id}/events/delivered/count", P_MANAGE),
    Case("GET", "/xapi/projects/{project_id}/events/delivered", P_MANAGE),
    Case("POST", "/xapi/projects/{project_id}/events/delivered", P_MANAGE, json={}),
    Case("GET", "/xapi/projects/{project_id}/events/delivered/{delivery_id}", P_MANAGE),
    # ------------------------------------------------------------------ dicom/routes.py: receivers
    Case("GET", "/xapi/dicomscp", ANY_USER),
    Case("POST", "/xapi/dicomscp", ADMIN_ONLY, json={"aeTitle": "NEWAE", "port": 11113, "enabled": False}),
    Case("PUT", "/xapi/dicomscp/start", ADMIN_ONLY),
    Case("PUT", "/xapi/dicomscp/stop", ADMIN_ONLY),
    Case("GET", "/xapi/dicomscp/title/{ae_title}/{port}", ANY_USER, url="/xapi/dicomscp/title/MATRIX/11112"),
    Case("GET", "/xapi/dicomscp/{receiver_id}", ANY_USER),
    Case("PUT", "/xapi/dicomscp/{receiver_id}", ADMIN_ONLY, json={"aeTitle": "MATRIX2"}),
    Case("DELETE", "/xapi/dicomscp/{receiver_id}", ADMIN_ONLY),
    Case("GET", "/xapi/dicomscp/{receiver_id}/enabled", ANY_USER),
    Case("PUT", "/xapi/dicomscp/{receiver_id}/enabled/{flag}", ADMIN_ONLY,
         url="/xapi/dicomscp/{receiver_id}/enabled/false"),
    Case("GET", "/xapi/dicomscp/quarantine", ADMIN_ONLY),
    Case("GET", "/xapi/dicomscp/quarantine/{qid}", NOT_SEEDED_ADMIN, url="/xapi/dicomscp/quarantine/999"),
    Case("POST", "/xapi/dicomscp/quarantine/{qid}/retry", NOT_SEEDED_ADMIN,
         url="/xapi/dicomscp/quarantine/999/retry"),
    Case("DELETE", "/xapi/dicomscp/quarantine/{qid}", NOT_SEEDED_ADMIN, url="/xapi/dicomscp/quarantine/999"),
    Case("GET", "/xapi/dicomscp/relabel", ADMIN_ONLY),
    Case("POST", "/xapi/dicomscp/relabel", P_WRITE, json={"accessionNumber": "ACC2", "project": "P1"}),
    Case("DELETE", "/xapi/dicomscp/relabel/{relabel_id}", P_WRITE),
    # ------------------------------------------------------------------ dicom/routes.py: anonymization
    Case("GET", "/xapi/anonymize/default", ANY_USER),
    Case("GET", "/xapi/anonymize/site", ANY_USER),
    Case("PUT", "/xapi/anonymize/site", ADMIN_ONLY, content=b'version "6.1"\n(0010,0010) := "X"\n',
         headers={"content-type": "text/plain"}),
    Case("GET", "/xapi/anonymize/site/enabled", ANY_USER),
    Case("PUT", "/xapi/anonymize/site/enabled", ADMIN_ONLY, params={"enable": "true"}),
    Case("GET", "/xapi/anonymize/projects/{project_id}", P_READ),
    Case("PUT", "/xapi/anonymize/projects/{project_id}", P_MANAGE,
         content=b'version "6.1"\n(0010,0010) := "X"\n', headers={"content-type": "text/plain"}),
    Case("GET", "/xapi/anonymize/projects/{project_id}/enabled", P_READ),
    Case("PUT", "/xapi/anonymize/projects/{project_id}/enabled", P_MANAGE, params={"enable": "true"}),
    # ------------------------------------------------------------------ dicom/routes.py: prearchive, import
    Case("GET", "/data/prearchive", ANY_USER, note="lists only what the caller may see"),
    Case("GET", "/data/prearchive/projects", ANY_USER, note="lists only what the caller may see"),
    Case("GET", "/data/prearchive/projects/{project_id}", P_WRITE),
    Case("GET", "/data/prearchive/projects/{project_id}/{timestamp}/{name}", NOT_SEEDED_P_WRITE,
         url="/data/prearchive/projects/P1/20260101_000000/nosuch"),
    Case("DELETE", "/data/prearchive/projects/{project_id}/{timestamp}/{name}", NOT_SEEDED_P_WRITE,
         url="/data/prearchive/projects/P1/20260101_000000/nosuch"),
    Case("POST", "/data/services/archive", NOT_SEEDED_P_WRITE,
         params={"src": "/prearchive/projects/P1/20260101_000000/nosuch"}),
    Case("POST", "/data/services/prearchive/delete", NOT_SEEDED_P_WRITE,
         params={"src": "/prearchive/projects/P1/20260101_000000/nosuch"}),
    Case("POST", "/data/services/prearchive/move", NOT_SEEDED_P_WRITE,
         params={"src": "/prearchive/projects/P1/20260101_000000/nosuch", "newProject": "P1"}),
    Case("POST", "/data/services/import", P_WRITE, ok=frozenset({400}),
         params={"import-handler": "DICOM-zip", "dest": "/archive/projects/P1"}, content=EMPTY_ZIP,
         headers={"content-type": "application/zip"}, note="an empty zip: allowed roles get past the checks"),
    # ------------------------------------------------------------------ containers/routes.py
    Case("GET", "/xapi/commands", ANY_USER),
    Case("POST", "/xapi/commands", ADMIN_ONLY, ok=frozenset({400}), json={},
         note="an invalid command: admins reach validation (400)"),
    Case("GET", "/xapi/commands/{command_id}", ANY_USER),
    Case("POST", "/xapi/commands/{command_id}", ADMIN_ONLY, ok=frozenset({400}), json={},
         note="an invalid update: admins reach validation (400)"),
    Case("DELETE", "/xapi/commands/{command_id}", ADMIN_ONLY),
    Case("GET", "/xapi/wrappers/{wrapper_id}", ANY_USER),
    Case("GET", "/xapi/wrappers/{wrapper_id}/enabled", ANY_USER),
    Case("GET", "/xapi/commands/{command_id}/wrappers/{name}/enabled", ANY_USER),
    Case("PUT", "/xapi/commands/{command_id}/wrappers/{name}/{flag}", ADMIN_ONLY,
         url="/xapi/commands/{command_id}/wrappers/{name}/enabled"),
    Case("PUT", "/xapi/wrappers/{wrapper_id}/{flag}", ADMIN_ONLY, url="/xapi/wrappers/{wrapper_id}/enabled"),
    Case("GET", "/xapi/projects/{project_id}/commands/{command_id}/wrappers/{name}/enabled", P_READ),
    Case("GET", "/xapi/projects/{project_id}/wrappers/{wrapper_id}/enabled", P_READ),
    Case("PUT", "/xapi/projects/{project_id}/commands/{command_id}/wrappers/{name}/{flag}", P_MANAGE,
         url="/xapi/projects/P1/commands/{command_id}/wrappers/{name}/disabled"),
    Case("PUT", "/xapi/projects/{project_id}/wrappers/{wrapper_id}/{flag}", P_MANAGE,
         url="/xapi/projects/P1/wrappers/{wrapper_id}/disabled"),
    Case("POST", "/xapi/wrappers/{wrapper_id}/root/{root}/launch", P_WRITE, url=LAUNCH_URL, json=LAUNCH_BODY),
    Case("POST", "/xapi/projects/{project_id}/wrappers/{wrapper_id}/root/{root}/launch", P_WRITE,
         url="/xapi/projects/P1/wrappers/{wrapper_id}/root/scan/launch", json=LAUNCH_BODY),
    Case("POST", "/xapi/commands/{command_id}/wrappers/{name}/root/{root}/launch", P_WRITE,
         url="/xapi/commands/{command_id}/wrappers/{name}/root/scan/launch", json=LAUNCH_BODY),
    Case("POST", "/xapi/projects/{project_id}/commands/{command_id}/wrappers/{name}/root/{root}/launch",
         P_WRITE, url="/xapi/projects/P1/commands/{command_id}/wrappers/{name}/root/scan/launch",
         json=LAUNCH_BODY),
    Case("GET", "/xapi/containers", ANY_USER, note="lists only containers of readable projects"),
    Case("GET", "/xapi/projects/{project_id}/containers", P_READ),
    Case("GET", "/xapi/containers/{container_id}", P_READ),
    Case("GET", "/xapi/containers/{container_id}/logs", P_READ),
    Case("GET", "/xapi/containers/{container_id}/logs/{which}", P_READ,
         url="/xapi/containers/{container_id}/logs/stdout"),
    Case("POST", "/xapi/containers/{container_id}/kill", P_WRITE),
    Case("GET", "/xapi/projects/{project_id}/conversion", P_READ),
    Case("GET", "/xapi/projects/{project_id}/experiments/{experiment}/conversion", P_READ),
    Case("GET", "/xapi/projects/{project_id}/dicom_to_nifti", P_READ),
    Case("PUT", "/xapi/projects/{project_id}/dicom_to_nifti", P_MANAGE, json={"enabled": False},
         ok=frozenset({400}), note="body shape is the containers helper's; 400 still means allowed"),
    Case("POST", "/xapi/projects/{project_id}/commands/dcm2niix/convert-missing", P_WRITE),
    # ------------------------------------------------------------------ xnat_api/routes.py: site
    Case("GET", "/data/version", PUBLIC, note="XNAT answers the version before login (clients probe it)"),
    Case("GET", "/xapi/siteConfig/buildInfo", PUBLIC, note="as /data/version"),
    Case("GET", "/xapi/siteConfig/buildInfo/version", PUBLIC, note="as /data/version"),
    Case("GET", "/xapi/schemas", PUBLIC, note="our own XSDs: no site data"),
    Case("GET", "/xapi/schemas/{name}", PUBLIC, url="/xapi/schemas/xnat"),
    Case("GET", "/data/search/elements", PUBLIC, note="data type names only (counts are not served)"),
    Case("GET", "/data/search/elements/{name}", PUBLIC, url="/data/search/elements/xnat:projectData"),
    Case("GET", "/data/scanners", ANY_USER),
    Case("GET", "/data/scan_types", ANY_USER),
    Case("GET", "/data/archive/scanners", ANY_USER),
    Case("GET", "/data/archive/scan_types", ANY_USER),
    # listings: every user gets the list of what they may see
    Case("GET", "/data/projects", ANY_USER, params={"format": "json"}),
    Case("GET", "/data/archive/projects", ANY_USER, params={"format": "json"}),
    Case("GET", "/data/experiments", ANY_USER, params={"format": "json"}),
    Case("GET", "/data/archive/experiments", ANY_USER, params={"format": "json"}),
    Case("GET", "/data/subjects", ANY_USER, params={"format": "json"}),
    Case("GET", "/data/archive/subjects", ANY_USER, params={"format": "json"}),
    # creating a project: any user may (XNAT's default); the creator becomes its owner
    Case("POST", "/data/projects", ANY_USER, content=PROJECT_XML, headers={"content-type": "text/xml"}),
    Case("POST", "/data/archive/projects", ANY_USER, content=PROJECT_XML,
         headers={"content-type": "text/xml"}),
    Case("PUT", "/data/projects/{rest:path}", ANY_USER, url="/data/projects/P2"),
    Case("PUT", "/data/archive/projects/{rest:path}", ANY_USER, url="/data/archive/projects/P2"),
    # methods the collections do not support: 405 for everyone
    *[Case(m, r, (405,) * 6) for m, r in (
        ("PUT", "/data/projects"), ("DELETE", "/data/projects"), ("PUT", "/data/archive/projects"),
        ("DELETE", "/data/archive/projects"), ("PUT", "/data/experiments"), ("POST", "/data/experiments"),
        ("DELETE", "/data/experiments"), ("PUT", "/data/archive/experiments"),
        ("POST", "/data/archive/experiments"), ("DELETE", "/data/archive/experiments"),
        ("PUT", "/data/subjects"), ("POST", "/data/subjects"), ("DELETE", "/data/subjects"),
        ("PUT", "/data/archive/subjects"), ("POST", "/data/archive/subjects"),
        ("DELETE", "/data/archive/subjects"))],
    # ------------------------------------------------------------------ xnat_api: project data (read)
    *[Case("GET", "/data/projects/{rest:path}", P_READ, url=u, params=q) for u, q in READ_URLS],
    *[Case("GET", "/data/archive/projects/{rest:path}", P_READ, url="/data/archive" + u[5:], params=q)
      for u, q in READ_URLS],
    Case("GET", "/data/experiments/{rest:path}", P_READ, url="/data/experiments/{experiment_xnat_id}",
         params={"format": "json"}),
    Case("GET", "/data/archive/experiments/{rest:path}", P_READ,
         url="/data/archive/experiments/{experiment_xnat_id}/scans", params={"format": "json"}),
    Case("GET", "/data/subjects/{rest:path}", P_READ, url="/data/subjects/{subject_xnat_id}",
         params={"format": "json"}),
    Case("GET", "/data/archive/subjects/{rest:path}", P_READ, url="/data/archive/subjects/{subject_xnat_id}",
         params={"format": "json"}),
    # ------------------------------------------------------------------ xnat_api: create and edit (members)
    Case("PUT", "/data/projects/{rest:path}", P_WRITE, url="/data/projects/P1/subjects/S2"),
    Case("PUT", "/data/projects/{rest:path}", P_WRITE, url="/data/projects/P1/subjects/S1/experiments/E2",
         params={"xsiType": "xnat:ctSessionData"}),
    Case("PUT", "/data/projects/{rest:path}", P_WRITE,
         url="/data/projects/P1/experiments/E1/scans/1/resources/NIFTI/files/x.nii", content=b"nifti bytes"),
    Case("PUT", "/data/projects/{rest:path}", P_WRITE, url="/data/projects/P1/subjects/S1",
         params={"label": "S1b"}),
    Case("PUT", "/data/archive/projects/{rest:path}", P_WRITE,
         url="/data/archive/projects/P1/subjects/S1/experiments/E1/scans/7",
         params={"xsiType": "xnat:ctScanData"}),
    Case("POST", "/data/projects/{rest:path}", P_WRITE, url="/data/projects/P1/subjects/S3"),
    Case("POST", "/data/archive/projects/{rest:path}", P_WRITE,
         url="/data/archive/projects/P1/experiments/E1/scans/1/resources/NIFTI/files/y.nii",
         content=b"nifti"),
    Case("PUT", "/data/experiments/{rest:path}", P_WRITE, url="/data/experiments/{experiment_xnat_id}",
         params={"label": "E1b"}),
    Case("PUT", "/data/archive/experiments/{rest:path}", P_WRITE,
         url="/data/archive/experiments/{experiment_xnat_id}/scans/1/resources/NIFTI/files/z.nii",
         content=b"nifti"),
    Case("POST", "/data/experiments/{rest:path}", P_WRITE, url="/data/experiments/{experiment_xnat_id}",
         params={"label": "E1b"}),
    Case("POST", "/data/archive/experiments/{rest:path}", P_WRITE,
         url="/data/archive/experiments/{experiment_xnat_id}", params={"label": "E1b"}),
    Case("PUT", "/data/subjects/{rest:path}", P_WRITE, url="/data/subjects/{subject_xnat_id}",
         params={"label": "S1b"}),
    Case("PUT", "/data/archive/subjects/{rest:path}", P_WRITE, url="/data/archive/subjects/{subject_xnat_id}",
         params={"label": "S1b"}),
    Case("POST", "/data/subjects/{rest:path}", P_WRITE, url="/data/subjects/{subject_xnat_id}",
         params={"label": "S1b"}),
    Case("POST", "/data/archive/subjects/{rest:path}", P_WRITE,
         url="/data/archive/subjects/{subject_xnat_id}",
         params={"label": "S1b"}),
    # ------------------------------------------------------------------ xnat_api: project settings (owners)
    Case("PUT", "/data/projects/{rest:path}", P_MANAGE, url="/data/projects/P1/prearchive_code/5"),
    Case("PUT", "/data/archive/projects/{rest:path}", P_MANAGE,
         url="/data/archive/projects/P1/accessibility/public"),
    # ------------------------------------------------------------------ xnat_api: delete (owners)
    Case("DELETE", "/data/projects/{rest:path}", P_DELETE, url="/data/projects/P1"),
    Case("DELETE", "/data/projects/{rest:path}", P_DELETE, url="/data/projects/P1/subjects/S1",
         params={"removeFiles": "true"}),
    Case("DELETE", "/data/projects/{rest:path}", P_DELETE,
         url="/data/projects/P1/experiments/E1/scans/1/resources/DICOM/files/1.dcm"),
    Case("DELETE", "/data/archive/projects/{rest:path}", P_DELETE,
         url="/data/archive/projects/P1/experiments/E1"),
    Case("DELETE", "/data/experiments/{rest:path}", P_DELETE,
         url="/data/experiments/{experiment_xnat_id}/scans/1"),
    Case("DELETE", "/data/archive/experiments/{rest:path}", P_DELETE,
         url="/data/archive/experiments/{experiment_xnat_id}"),
    Case("DELETE", "/data/subjects/{rest:path}", P_DELETE, url="/data/subjects/{subject_xnat_id}"),
    Case("DELETE", "/data/archive/subjects/{rest:path}", P_DELETE,
         url="/data/archive/subjects/{subject_xnat_id}"),
]


def seed(ctx: Any, password: str) -> dict[str, str]:
    """Build the shared world in ``ctx`` (admin exists already); returns extra SAMPLE values."""
    from flip_imaging.archive.models import Project, ProjectMember
    from flip_imaging.auth import service

    with ctx.session() as db:
        users = {name: service.create_user(db, name, None, email=f"{name}@example.org")
                 for name in ("owner", "member", "collab", "outsider")}
        for user in users.values():
            user.password_hash = _hash_of(password)  # argon2 is slow on purpose: hash once per run
        project = Project(id="P1", name="Project one", accessibility="private")
        db.add(project)
        db.flush()
        for name, role in (("owner", "owner"), ("member", "member"), ("collab", "collaborator")):
            db.add(ProjectMember(project_pk=project.pk, user_pk=users[name].pk, role=role))
        issued = service.issue_token(db, users["collab"])
    _seed_archive(ctx)
    return {"alias": issued.alias, "secret": issued.secret, "password": password, **_seed_events(ctx),
            **_seed_dicom(ctx), **_seed_containers(ctx)}


@functools.cache
def _hash_of(password: str) -> str:
    from flip_imaging.auth.passwords import hash_password

    return hash_password(password)


def _seed_archive(ctx: Any) -> None:
    from flip_imaging.archive.store import ArchiveWriter

    with ArchiveWriter(ctx) as w:
        project = w.project("P1")
        subject, _ = w.ensure_subject(project, "S1")
        experiment, _ = w.ensure_experiment(project, subject, "E1", xsi_type="xnat:ctSessionData",
                                            modality="CT")
        scan, _ = w.ensure_scan(experiment, "1", xsi_type="xnat:ctScanData", type="AXIAL", modality="CT")
        resource, _ = w.ensure_resource(scan, "DICOM", format="DICOM", content="RAW")
        w.add_file(resource, "1.dcm", b"DICM placeholder bytes (not parsed by permission checks)")
        notes, _ = w.ensure_resource(project, "NOTES")
        w.add_file(notes, "readme.txt", b"hello")


def _seed_events(ctx: Any) -> dict[str, str]:
    """A site subscription, a P1 subscription (both logging actions on ScanEvent CREATED) and a delivery
    of a P1 scan event: ``{site_sub_id}``, ``{sub_id}``, ``{delivery_id}``."""
    from sqlalchemy import select

    from flip_imaging.events import bus
    from flip_imaging.events import service as events
    from flip_imaging.events.actions import LoggingActionProvider
    from flip_imaging.events.delivery.models import Delivery
    from flip_imaging.events.dispatcher import dispatch_pending

    assert LoggingActionProvider.action_key == LOGGING_ACTION_KEY
    with ctx.session() as db:
        site = events.create_subscription(db, _sub_model("site-sub", []), project_id=None, owner="admin")
        project = events.create_subscription(db, _sub_model("p1-sub", ["P1"]), project_id="P1",
                                              owner="owner")
        bus.publish(db, "ScanEvent", "CREATED", {"id": "1", "project-id": "P1"}, project_id="P1",
                    object_uri="/archive/experiments/E1/scans/1")
    dispatch_pending(ctx)
    with ctx.session() as db:
        delivery = db.scalar(select(Delivery.id).where(Delivery.project_id == "P1").limit(1))
    assert delivery is not None, "seeding: the P1 scan event produced no delivery"
    return {"site_sub_id": str(site.id), "sub_id": str(project.id), "delivery_id": str(delivery)}


def _seed_dicom(ctx: Any) -> dict[str, str]:
    """A disabled DICOM receiver (``{receiver_id}``, AE ``MATRIX`` port 11112) and a P1 relabel entry
    (``{relabel_id}``). Quarantine and prearchive entries are not seeded: those cases use ids that do
    not exist, so allowed roles get 404 there (what they are refused is still checked)."""
    from flip_imaging.intake import receivers as rx
    from flip_imaging.intake.models import DicomRelabel

    with ctx.session() as db:
        receiver = rx.create_receiver(db, {"aeTitle": "MATRIX", "port": 11112, "enabled": False})
        relabel = DicomRelabel(key_kind="accession", key_value="ACC1", project="P1", subject="S9",
                               session="ACC1")
        db.add(relabel)
        db.flush()
        return {"receiver_id": str(receiver.pk), "relabel_id": str(relabel.pk)}


def _seed_containers(ctx: Any) -> dict[str, str]:
    """The built-in dcm2niix command (``{command_id}``, wrapper ``{wrapper_id}`` named ``{name}``) and one
    queued container on P1's scan 1 (``{container_id}``); no worker runs in the matrix."""
    from sqlalchemy import select

    from flip_imaging.archive.models import Experiment, Subject
    from flip_imaging.containers import registry
    from flip_imaging.containers import service as containers

    with ctx.session() as db:
        wrapper = registry.dcm2niix_wrapper(db)
        registry.set_project_enabled(db, wrapper, "P1", True)
        experiment_id = db.scalar(select(Experiment.id).where(Experiment.label == "E1"))
        subject_id = db.scalar(select(Subject.id).where(Subject.label == "S1"))
        scan_uri = f"/archive/experiments/{experiment_id}/scans/1"
        container = containers.launch(db, wrapper, "scan", {"scan": scan_uri}, user="member", project_id="P1")
        return {"command_id": str(wrapper.command_id), "wrapper_id": str(wrapper.id), "name": wrapper.name,
                "container_id": str(container.id), "experiment_xnat_id": str(experiment_id),
                "subject_xnat_id": str(subject_id)}
