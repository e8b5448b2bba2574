"""Audit: hash chains over the trail and the message history, completeness checks, review,
exports, reports and retention. The web console is in :mod:`broadcaster.web`."""
