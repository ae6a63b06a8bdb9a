"""manage.py diagnostics ACTION [--arguments JSON]: one of diagnostics/actions.py, with its keyword
arguments as a JSON object (--arguments, or else stdin: a long list of tasks to enqueue exceeds
what one command-line argument may hold); prints its result as JSON, on the last line."""

import json
import sys

from django.core.management.base import BaseCommand, CommandError

from diagnostics.actions import ACTIONS


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("action", choices=sorted(ACTIONS))
        parser.add_argument("--arguments", help="the action's keyword arguments, a JSON object (default: stdin)")

    def handle(self, *args, action, arguments=None, **options):
        text = (sys.stdin.read() if arguments is None else arguments).strip()
        try:
            arguments = json.loads(text) if text else {}
        except ValueError as error:
            raise CommandError(f"the arguments of {action} are not a JSON object: {error}") from None
        self.stdout.write(json.dumps(ACTIONS[action](**arguments)))
