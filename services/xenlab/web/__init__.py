"""`xenlab web`: the live web view of a running lab (app.py), and the page
it serves (static/; the graph-drawing library vendored from npm by
web/package.json's build)."""
