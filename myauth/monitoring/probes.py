"""Whether the services Prometheus cannot otherwise see answer: the web's login page (which needs
Django, MariaDB and the cache) and beat's latest scheduler tick (beat.py writes it to Redis).

The web's Docker health check runs the same probe on 127.0.0.1:

    python3 -m monitoring.probes http://127.0.0.1:8000
"""

import os
import sys
import urllib.parse
import urllib.request

from monitoring import keys

LOGIN_PATH = "/account/login/"


def login_page_renders(base_url: str, site_url: str, timeout: float) -> bool:
    """The login page answers 200, asked under the site's host name (Django's ALLOWED_HOSTS)."""
    request = urllib.request.Request(base_url + LOGIN_PATH, headers={"Host": urllib.parse.urlparse(site_url).hostname})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except Exception as error:  # any failure is simply "down"; the health check prints why
        print(f"{base_url}{LOGIN_PATH}: {error}", file=sys.stderr)
        return False


def beat_ticked(client) -> bool:
    """Beat's scheduler ticked within keys.BEAT_TICK_SECONDS (the key expires after that)."""
    return bool(client.exists(keys.BEAT_TICK))


if __name__ == "__main__":
    sys.exit(0 if login_page_renders(sys.argv[1], os.environ["SITE_URL"], timeout=10) else 1)
