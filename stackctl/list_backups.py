"""List the backups scripts/backup wrote, oldest first, with their size.

    scripts/list-backups [DIRECTORY]     (default: backups/ in this checkout)
"""

import sys
from pathlib import Path

from stackctl import backups


def main(arguments: list) -> int:
    if arguments[:1] in (["-h"], ["--help"]) or len(arguments) > 1:
        print(__doc__, file=sys.stderr)
        return 2
    directory = Path(arguments[0]) if arguments else backups.DEFAULT_DIRECTORY
    found = backups.list_backups(directory)
    if not found:
        print(f"no backups in {directory}")
    for name, size, checked in found:
        print(f"{directory / name}  {backups.human_size(size):>10}{'' if checked else '  (no .sha256)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
