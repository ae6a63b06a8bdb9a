"""Back up the running stack's database without stopping it.

    scripts/backup [DIRECTORY]     (default: backups/ in this checkout; ENV_FILE: the stack's .env)

`mariadb-dump --single-transaction` runs in the mariadb container as the application's user
(one consistent snapshot while web and workers keep writing; InnoDB only, as Alliance Auth's
tables are), and its output is gzip-compressed here into
DIRECTORY/myauth-<UTC time>-allianceauth-<version>.sql.gz, with a .sha256 beside it. Both are
readable by their owner only (the dump holds password hashes, tokens and sessions). Redis and
.env are not in it: see README, "Backup and restore".
"""

import sys
from pathlib import Path

from stackctl import backups
from stackctl.stack import Stack


def write_backup(stack: Stack, directory: Path) -> str:
    target = backups.backup(stack, directory)
    return f"wrote {target} ({backups.human_size(target.stat().st_size)}) and {target.name}.sha256"


def main(arguments: list) -> int:
    return backups.command("backup", __doc__, arguments, write_backup, default=backups.DEFAULT_DIRECTORY)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
