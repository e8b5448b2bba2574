"""Web front ends. The audit console (:mod:`broadcaster.web.console`) is read-only, server-rendered
Jinja2 with inline SVG charts: no JavaScript and nothing fetched from elsewhere."""
