"""Shared steps of the browser tests."""

from __future__ import annotations

from urllib.parse import quote


def log_in(page, live_server, *, username: str, password: str, next_url: str = "/") -> None:
    """Log in through the login page and wait until `next_url` (its path) is open; `next_url` may carry a query."""
    page.goto(f"{live_server.url}/login/?next={quote(next_url)}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{next_url.split('?')[0]}*")
