"""The web view's vendored graph library is the one web/package-lock.json
pins, byte for byte as web/build.mjs (./dev web-assets) copied it; and the
page loads it and its own code from where the package installs them."""
import hashlib
import json
import re
from pathlib import Path

ROOT = Path(__file__).parents[3]
STATIC = ROOT / "services" / "xenlab" / "web" / "static"


def test_the_vendored_cytoscape_is_the_locked_one():
    lock = json.loads((ROOT / "web" / "package-lock.json").read_text())
    package = json.loads((ROOT / "web" / "package.json").read_text())
    record = json.loads((STATIC / "vendor" / "VENDORED.json").read_text())
    locked = lock["packages"]["node_modules/cytoscape"]
    assert package["dependencies"]["cytoscape"] == locked["version"], "package.json pins another version"
    assert record["cytoscape"]["version"] == locked["version"]
    assert record["cytoscape"]["integrity"] == locked["integrity"]
    data = (STATIC / "vendor" / "cytoscape.min.js").read_bytes()
    assert hashlib.sha256(data).hexdigest() == record["cytoscape"]["sha256"], \
        "the vendored file was changed by hand: rebuild it with ./dev web-assets"
    assert b"The Cytoscape Consortium" in data[:200]


def test_the_page_refers_only_to_files_the_package_ships():
    import tomllib
    html = (STATIC / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="/static/([^"]+)"', html)
    assert "vendor/cytoscape.min.js" in refs and "app.js" in refs
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["xenlab.web"]
    for ref in refs:
        assert (STATIC / ref).is_file(), ref
        assert any(Path("static", ref).match(p) for p in patterns), f"{ref} is not package data"
