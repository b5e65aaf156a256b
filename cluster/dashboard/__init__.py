"""The web dashboard every node serves on its HTTP port (docs/dashboard.md).

`routes` answers `/dashboard/...`: the page's static files (`static/`, plain
HTML, CSS and JS checked in: no build step, nothing fetched from elsewhere)
and a JSON API over the node's own read and admin ops.
"""
