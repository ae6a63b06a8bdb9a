"""Real Alliance Auth data for the tests that must not lose it (backup, restore, upgrade): a
superuser with a password, in a group, whose EVE character is a member of a state, created and
read back through Django in the web container; a login through the web's password form; and
the row count of every table."""

import os
import re
import subprocess

import requests

from stackctl.stack import ROOT

class Member:
    """`Name-admin` with a password, in `Name Group`; character `Name Pilot` (character_id) of
    `Name Corp`, a member of `Name State` (diagnostics/actions.py makes and reads them)."""

    def __init__(self, name: str, character_id: int):
        self.name, self.character_id = name, character_id
        self.username, self.password = f"{name.lower()}-admin", f"the-old-password-{name.lower()}-7f3a9c"

    def create(self, stack) -> None:
        stack.diagnostics("create-member", name=self.name, character_id=self.character_id, password=self.password)

    def find(self, stack) -> dict:
        """What of the member the database holds; equals `expected` when all of it is there."""
        return stack.diagnostics("find-member", name=self.name, character_id=self.character_id,
                                 password=self.password)

    @property
    def expected(self) -> dict:
        return {"user": True, "password": True, "groups": [f"{self.name} Group"],
                "state members": [f"{self.name} Pilot"], "characters": [f"{self.name} Pilot"]}

    def delete(self, stack) -> None:
        stack.diagnostics("delete-member", name=self.name, character_id=self.character_id)


def count_rows(stack) -> dict:
    """{table: rows} of every table of the stack's database."""
    return stack.diagnostics("count-rows")


def script(name: str, *args, env_file, root=ROOT) -> subprocess.CompletedProcess:
    """One of scripts/ (of this checkout, or of `root`) run for the stack of `env_file`."""
    return subprocess.run([root / "scripts" / name, *map(str, args)], env={**os.environ, "ENV_FILE": str(env_file)},
                          capture_output=True, text=True)


def admin_login(url: str, username: str, password: str) -> requests.Response:
    """Log in through Alliance Auth's one password form (Django admin's; members log in with EVE
    SSO) as a browser on localhost does; return the page it lands on. The session and CSRF
    cookies are Secure: a browser sends them to http://localhost, requests would not, so the
    Cookie header is set here."""
    session = requests.Session()

    def send(method: str, path: str, **options) -> requests.Response:
        cookies = "; ".join(f"{cookie.name}={cookie.value}" for cookie in session.cookies)
        return session.request(method, f"{url}{path}", headers={"Cookie": cookies, "Referer": f"{url}/admin/login/"},
                               allow_redirects=False, timeout=30, **options)

    form = send("GET", "/admin/login/?next=/admin/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)[1]
    posted = send("POST", "/admin/login/?next=/admin/",
                  data={"csrfmiddlewaretoken": token, "username": username, "password": password, "next": "/admin/"})
    assert posted.status_code == 302, f"the login form answered {posted.status_code}: {posted.text[:2000]}"
    return send("GET", posted.headers["Location"])


def assert_logs_in(url: str, member: Member) -> None:
    """The member's password opens Django's admin site through the web."""
    admin = admin_login(url, member.username, member.password)
    assert admin.status_code == 200 and "Site administration" in admin.text, admin.text[:2000]
