"""scripts/upgrade: upgrade a running stack to what this checkout builds, losing nothing: a new Alliance Auth
release or community app (after scripts/lock), a new release of this stack, a newer Debian
(MariaDB, Redis).

Nothing that runs is replaced until the new images have migrated the database:

1. check .env and the sizes, as scripts/up does, and that mariadb and redis run;
2. back up the database (scripts/backup);
3. build the new images under a candidate tag, <tag>-upgrading, so that the stack's own tag
   still names the images its containers run;
4. run the migrate one-shot from the candidate image while the old web, workers and beat keep
   running;
5. the candidates take the stack's tag (the images they replace keep <tag>-previous) and
   `docker compose up --wait` replaces every service whose image changed: migrate first
   (nothing left to apply), then web, the workers and beat. Docker stops the old worker with
   its stop grace period, so its running tasks finish; queued tasks wait in Redis for the new
   one. A newer MariaDB runs mariadb-upgrade on its volume once, before it reports healthy.

If the migrations fail, the old services keep running and the error names the backup and the
command that restores it.

    scripts/upgrade [DIRECTORY]     (backups go to DIRECTORY, default backups/ in this checkout;
                                     ENV_FILE: the stack's .env)
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import environment

from stackctl import backups, envfile
from stackctl.stack import ROOT, Stack

CANDIDATE, PREVIOUS = "-upgrading", "-previous"  # suffixes of the stack's image tag


def say(message: str) -> None:
    print(f"upgrade: {message}", flush=True)


def shown(command: list, env: dict) -> int:
    """Run a command with its output passed through (a build or a migration takes a while, and
    its output is what tells why it failed); return its exit status."""
    return subprocess.run(command, cwd=ROOT, env=env, stdout=sys.stdout, stderr=subprocess.STDOUT).returncode


def built_images(stack: Stack, env: dict) -> set:
    """The images the stack's compose files build, with the tag `env` gives them."""
    services = json.loads(stack.compose("config", "--format", "json", env=env).stdout)["services"]
    return {service["image"] for service in services.values() if "build" in service}


def image_exists(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def check(stack: Stack) -> None:
    """What scripts/up checks, and a running database to back up: refused before anything."""
    try:
        envfile.check_env_file(str(stack.env_file))
    except environment.ConfigurationError as error:
        raise backups.BackupError(f"refused, nothing was touched: {stack.env_file}:\n{error}") from None
    sizing = subprocess.run([ROOT / "scripts" / "check-sizing", "--env-file", str(stack.env_file)],
                            capture_output=True, text=True)
    if sizing.returncode != 0:
        raise backups.BackupError(f"refused, nothing was touched:\n{sizing.stderr.strip()}")
    for service in ("mariadb", "redis"):
        if service not in stack.running():
            raise backups.BackupError(f"refused, nothing was touched: {service} is not running. scripts/upgrade "
                                      "upgrades a running stack; start it with scripts/up")


def restore_command(env_file: Path, backup: Path, image_tag: str = "") -> str:
    """The exact command that puts `backup` back, on the images tagged `image_tag` if given."""
    settings = [f"ENV_FILE={env_file}"] if env_file != ROOT / ".env" else []
    settings += [f"IMAGE_TAG={image_tag}"] if image_tag else []
    return " ".join([*settings, str(ROOT / "scripts" / "restore"), str(backup)])


def upgrade(stack: Stack, directory: Path) -> None:
    check(stack)
    current = built_images(stack, dict(os.environ))
    tag = next(iter(current)).rpartition(":")[2]
    candidate = {**os.environ, "ENV_FILE": str(stack.env_file), "IMAGE_TAG": tag + CANDIDATE}

    backup = step(f"backing up the database into {directory}", lambda: backups.backup(stack, directory))
    say(f"backed up the database to {backup}")
    if step(f"building the new images, tagged {tag + CANDIDATE}", lambda: shown([ROOT / "scripts" / "build"],
                                                                                 candidate)):
        raise backups.BackupError(f"the build failed (its output is above); nothing was replaced, the stack runs "
                                  f"as before. The backup taken before: {backup}")
    if step("migrating the database with the new image, while the old services keep running",
            lambda: shown(stack.command("run", "--rm", "--no-deps", "-T", "migrate"), candidate)):
        raise backups.BackupError(
            f"the migrations failed (their output is above). Nothing was replaced: web, the workers and beat still "
            f"run the images from before, on the database as the failed migration left it (MariaDB cannot roll "
            f"back a schema change: the migrations before the failing one stay applied).\n"
            f"The backup taken before the upgrade: {backup}\n"
            f"To put the database back as it was:\n    {restore_command(stack.env_file, backup)}\n"
            f"The new images keep the tag {tag + CANDIDATE}; fix the migration, or go back to the code you upgraded "
            f"from, before running scripts/upgrade or scripts/up again.")
    promote(current)
    say(f"the new images are tagged {tag}, the ones they replace {tag + PREVIOUS}")
    if step("replacing the services (docker compose up --wait: the old worker finishes its running tasks first)",
            lambda: shown(stack.command("up", "--detach", "--wait"), dict(os.environ))):
        raise backups.BackupError(
            f"the database is migrated, but not every service came up healthy (see above, and "
            f"`docker compose logs SERVICE`). The backup taken before the upgrade: {backup}\n"
            f"To go back to the release you upgraded from, restore it on the previous images:\n"
            f"    {restore_command(stack.env_file, backup, tag + PREVIOUS)}")


def step(what: str, action):
    """Say what starts, do it, say how long it took; return what it returned."""
    say(what)
    began = time.monotonic()
    result = action()
    say(f"took {time.monotonic() - began:.0f} s")
    return result


def promote(images: set) -> None:
    """Each image built as <image>-upgrading becomes <image>; the one it replaces, <image>-previous."""
    for image in sorted(images):
        new = image + CANDIDATE
        if image_exists(new):
            if image_exists(image):
                subprocess.run(["docker", "tag", image, image + PREVIOUS], check=True)
            subprocess.run(["docker", "tag", new, image], check=True)
            subprocess.run(["docker", "rmi", new], check=True, capture_output=True)


def upgrade_and_report(stack: Stack, directory: Path) -> str:
    upgrade(stack, directory)
    return "done, every service is healthy"


def main(arguments: list) -> int:
    return backups.command("upgrade", __doc__, arguments, upgrade_and_report, default=backups.DEFAULT_DIRECTORY)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
