"""Fill build/wheels/ with the files the app image installs, taken from PyPI on the host.

Builds cannot rely on reaching PyPI from inside a container (locked-down CI, TLS-intercepting
proxies), so the host fetches exactly the locked files and the image installs them with
`pip --no-index --require-hashes`. For each pinned requirement it takes a wheel built for the
image (CPython 3.13, glibc x86_64) or, where PyPI has none, the source distribution; every
file is checked against the lock's sha256 before it is kept. A file already present whose
sha256 the lock lists is reused without asking the index.
"""

import concurrent.futures
import hashlib
import html.parser
import json
import os
import re
import urllib.parse
import urllib.request
from pathlib import Path

from stackctl.stack import ROOT
LOCKS = [ROOT / "images/app/requirements.lock", ROOT / "images/app/build-requirements.lock"]
WHEELHOUSE = ROOT / "build/wheels"
INDEX = os.environ.get("PYPI_SIMPLE_URL", "https://pypi.org/simple").rstrip("/")
PYTHON_TAGS = {"cp313", "py3", "py313", "py2.py3"}
ABI_TAGS = {"cp313", "abi3", "none"}
MAX_GLIBC = (2, 41)  # Debian 13's glibc


def locked_requirements(lock: Path):
    """Yield (name, version, {sha256, ...}) for each pinned requirement of a pip lock file."""
    text = lock.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)(.*)$", line.strip())
        if match:
            name, version, rest = match.groups()
            yield name, version, set(re.findall(r"--hash=sha256:([0-9a-f]{64})", rest))


def wheel_fits(filename: str) -> bool:
    python, abi, platform = filename[:-4].split("-")[-3:]
    if not (set(python.split(".")) & PYTHON_TAGS or python.startswith("cp3") and abi == "abi3"):
        return False
    if abi not in ABI_TAGS:
        return False
    for tag in platform.split("."):
        if tag == "any":
            return True
        legacy = {"manylinux1_x86_64": (2, 5), "manylinux2010_x86_64": (2, 12), "manylinux2014_x86_64": (2, 17)}
        match = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", tag)
        glibc = (int(match[1]), int(match[2])) if match else legacy.get(tag)
        if glibc and glibc <= MAX_GLIBC:
            return True
    return False


class _Links(html.parser.HTMLParser):
    """The files of a PEP 503 (HTML) project page, in PEP 691's shape: filename, url, hashes."""

    def __init__(self, base_url: str):
        super().__init__()
        self.base_url, self.files, self._href = base_url, [], None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href:
            url, _, fragment = urllib.parse.urljoin(self.base_url, self._href).partition("#")
            algorithm, _, digest = fragment.partition("=")
            self.files.append({"filename": data.strip(), "url": url, "hashes": {algorithm: digest}})
            self._href = None


def index_files(name: str) -> list:
    """A project's files from the simple index: JSON (PEP 691) where the index offers it, else
    HTML (PEP 503), which every index and proxy serves."""
    url = f"{INDEX}/{name}/"
    accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}), timeout=60) as response:
        body = response.read().decode()
        if "json" in response.headers.get("Content-Type", ""):
            return json.loads(body)["files"]
    links = _Links(url)
    links.feed(body)
    return links.files


def choose_file(name: str, version: str, hashes: set) -> dict:
    files = index_files(name)
    locked = [f for f in files if f["hashes"].get("sha256") in hashes]
    wheels = [f for f in locked if f["filename"].endswith(".whl") and wheel_fits(f["filename"])]
    sdists = [f for f in locked if f["filename"].endswith((".tar.gz", ".zip"))]
    if not wheels and not sdists:
        raise SystemExit(f"fetch-wheels: no file of {name}=={version} on {INDEX} fits the image and the lock")
    return (wheels or sdists)[0]


def fetch(requirement, present: dict, wheelhouse: Path = WHEELHOUSE) -> str:
    name, version, hashes = requirement
    for filename, sha256 in present.items():
        if sha256 in hashes:
            return filename
    chosen = choose_file(name, version, hashes)
    target = wheelhouse / chosen["filename"]
    expected = chosen["hashes"]["sha256"]
    with urllib.request.urlopen(chosen["url"], timeout=300) as response:
        data = response.read()
    if hashlib.sha256(data).hexdigest() != expected:
        raise SystemExit(f"fetch-wheels: {chosen['filename']} does not match its locked sha256")
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.rename(target)
    return target.name


def main() -> None:
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    requirements = [r for lock in LOCKS for r in locked_requirements(lock)]
    present = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in WHEELHOUSE.iterdir()}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        kept = set(pool.map(lambda r: fetch(r, present), requirements))
    for stale in set(p.name for p in WHEELHOUSE.iterdir()) - kept:
        (WHEELHOUSE / stale).unlink()
    print(f"fetch-wheels: {len(kept)} files in {WHEELHOUSE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
