"""README.md's table of contents and its links within the page."""

import re

from stackctl.stack import ROOT

README = (ROOT / "README.md").read_text()


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(level: str) -> list:
    return re.findall(rf"^{level} (.+)$", README, flags=re.MULTILINE)


def test_the_contents_list_every_section():
    contents = README.split("## Contents", 1)[1].split("\n## ", 1)[0]
    missing = [h for h in headings("##") if h != "Contents" and f"](#{anchor(h)})" not in contents]
    assert not missing, f"README.md's Contents lack: {missing}"


def test_every_link_within_the_page_leads_to_a_heading():
    anchors = {anchor(h) for level in ("#", "##", "###") for h in headings(level)}
    broken = sorted(set(re.findall(r"\]\(#([^)]+)\)", README)) - anchors)
    assert not broken, f"README.md links to headings it does not have: {broken}"
