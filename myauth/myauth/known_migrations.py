"""Print, as JSON, every migration this release's code has, and those its squashed migrations
replace (a database that applied the replaced ones is not newer): what scripts/restore compares
a dump's django_migrations with. Run in the app image: python3 -m myauth.known_migrations
"""

import json

import django


def known() -> list:
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(None, ignore_no_migrations=True)
    names = set(loader.disk_migrations)
    for migration in loader.disk_migrations.values():
        names.update(migration.replaces)
    return sorted(names)


if __name__ == "__main__":
    django.setup()
    print(json.dumps(known()))
