"""Real Alliance Auth data for the tests that must not lose it (backup, restore, upgrade): a
superuser with a password, in a group, whose EVE character is a member of a state, created and
read back through Django in the web container; a login through the web's password form; and
the row count of every table."""

import json
import os
import re
import subprocess

import requests

from tests.conftest import ROOT, run_in

COUNT_ROWS = """
import json
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("SHOW TABLES")
    tables = [row[0] for row in cursor.fetchall()]
    counts = {}
    for table in tables:
        cursor.execute(f"SELECT COUNT(*) FROM `{table}`")
        counts[table] = cursor.fetchone()[0]
print(json.dumps(counts))
"""


class Member:
    """`Name-admin` with a password, in `Name Group`; character `Name Pilot` (character_id) of
    `Name Corp`, a member of `Name State`."""

    def __init__(self, name: str, character_id: int):
        self.name, self.character_id = name, character_id
        self.username, self.password = f"{name.lower()}-admin", f"the-old-password-{name.lower()}-7f3a9c"

    def create(self, stack) -> None:
        shell(stack, f"""
from django.contrib.auth.models import Group, User
from allianceauth.authentication.models import State
from allianceauth.eveonline.models import EveCharacter
user = User.objects.create_superuser({self.username!r}, "{self.username}@example.com", {self.password!r})
group = Group.objects.create(name="{self.name} Group")
user.groups.add(group)
character = EveCharacter.objects.create(character_id={self.character_id}, character_name="{self.name} Pilot",
    corporation_id=98000001, corporation_name="{self.name} Corp", corporation_ticker="{self.name[:4].upper()}")
state = State.objects.create(name="{self.name} State", priority=77)
state.member_characters.add(character)
print(1)
""")

    def find(self, stack) -> dict:
        """What of the member the database holds; equals `expected` when all of it is there."""
        return shell(stack, f"""
import json
from django.contrib.auth.models import User
from allianceauth.authentication.models import State
from allianceauth.eveonline.models import EveCharacter
user = User.objects.filter(username={self.username!r}).first()
state = State.objects.filter(name="{self.name} State").first()
print(json.dumps({{
    "user": bool(user), "password": bool(user and user.check_password({self.password!r})),
    "groups": sorted(user.groups.values_list("name", flat=True)) if user else [],
    "state members": sorted(state.member_characters.values_list("character_name", flat=True)) if state else [],
    "characters": list(EveCharacter.objects.filter(character_id={self.character_id}).values_list("character_name", flat=True)),
}}))
""")

    @property
    def expected(self) -> dict:
        return {"user": True, "password": True, "groups": [f"{self.name} Group"],
                "state members": [f"{self.name} Pilot"], "characters": [f"{self.name} Pilot"]}

    def delete(self, stack) -> None:
        shell(stack, f"""
from django.contrib.auth.models import Group, User
from allianceauth.authentication.models import State
from allianceauth.eveonline.models import EveCharacter
User.objects.filter(username={self.username!r}).delete()
Group.objects.filter(name="{self.name} Group").delete()
State.objects.filter(name="{self.name} State").delete()
EveCharacter.objects.filter(character_id={self.character_id}).delete()
print(1)
""")


def shell(stack, script: str):
    """Run Python in `manage.py shell` in the web container; its last line of output, as JSON."""
    return json.loads(run_in(stack, "web", "python3", "manage.py", "shell", "-c", script).strip().splitlines()[-1])


def count_rows(stack) -> dict:
    """{table: rows} of every table of the stack's database."""
    return shell(stack, COUNT_ROWS)


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
