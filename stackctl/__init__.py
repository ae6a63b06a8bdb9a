"""The host's side of the stack: the tools scripts/ runs (standard library only, so that they
run before anything is installed). Each module is one tool or what several share:

    stack      the one driver of a running stack: compose, exec, redis-cli, manage.py, SQL, build
    envfile    .env: generated with fresh secrets, checked, the URL the site answers at
    sizing     the rules an overlay's sizes must keep (scripts/check-sizing)
    backups    backups, their checks, restores (scripts/backup, list-backups, restore)
    upgrades   scripts/upgrade
    swarm      the stack rendered for Docker Swarm (scripts/swarm-deploy)
    status     the stack at a glance (scripts/status)
    wheels     the wheelhouse the app image installs from (scripts/build)
    loadweb    load on the web app from this machine (the fault tests)

The variables' table is myauth/environment.py, shared with the containers; scripts/ puts
myauth/ and this checkout on PYTHONPATH (scripts/internal/stackctl), as pytest.ini does.
"""
