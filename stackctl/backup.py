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
import time
from pathlib import Path

from stackctl import backups
from stackctl.stack import Stack, StackError


def main(arguments: list) -> int:
    if arguments[:1] in (["-h"], ["--help"]) or len(arguments) > 1:
        print(__doc__, file=sys.stderr)
        return 2
    began = time.monotonic()
    try:
        target = backups.backup(Stack(), Path(arguments[0]) if arguments else backups.DEFAULT_DIRECTORY)
    except StackError as error:
        print(f"backup: {error}", file=sys.stderr)
        return 1
    print(f"backup: wrote {target} ({backups.human_size(target.stat().st_size)}, "
          f"{time.monotonic() - began:.1f} s) and {target.name}.sha256")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
