"""Brute-force protection (issue 13 item 5): django-axes locks a username, and an address, after repeated failed
logins (login page and token endpoint alike) with a clear message; DRF throttles the API; the token endpoint
gives annotators' scripts a token for their username and password."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

LIMIT = 5


@pytest.fixture(autouse=True)
def _limits(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.AXES_FAILURE_LIMIT = LIMIT
    cache.clear()  # the throttles count in the cache
    yield
    cache.clear()


@pytest.fixture
def ann(django_user_model):
    return django_user_model.objects.create_user("ann", password="right-pw-123")


def login(client, username, password, addr="10.0.0.1"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=addr)


def test_login_locks_a_username_after_repeated_failures_with_a_clear_message(client, ann):
    for _ in range(LIMIT - 1):
        assert login(client, "ann", "wrong").status_code == 200  # the form again, with the usual error
    locked = login(client, "ann", "wrong")
    assert locked.status_code == 429
    assert "Too many failed logins" in locked.content.decode()
    # the right password does not get in while locked, from any address
    again = login(client, "ann", "right-pw-123", addr="10.0.0.99")
    assert again.status_code == 429 and "_auth_user_id" not in client.session
    assert "Too many failed logins" in again.content.decode()


def test_login_locks_an_address_that_tries_many_usernames(client, django_user_model):
    for i in range(LIMIT):
        django_user_model.objects.create_user(f"user{i}", password="right-pw-123")
    for i in range(LIMIT):
        login(client, f"user{i}", "wrong", addr="10.0.0.7")
    other = django_user_model.objects.create_user("fresh", password="right-pw-123")
    assert login(client, other.username, "right-pw-123", addr="10.0.0.7").status_code == 429
    # another address is not affected
    assert login(client, other.username, "right-pw-123", addr="10.0.0.8").status_code == 302


def test_a_few_typos_then_the_right_password_log_in(client, ann):
    for _ in range(LIMIT - 2):
        login(client, "ann", "wrong")
    assert login(client, "ann", "right-pw-123").status_code == 302
    assert client.session.get("_auth_user_id") == str(ann.pk)


def test_token_endpoint_gives_a_token_and_counts_failures(ann):
    api = APIClient(REMOTE_ADDR="10.1.0.1")
    good = api.post("/api/auth/token/", {"username": "ann", "password": "right-pw-123"}, format="json")
    assert good.status_code == 200 and good.json()["token"] == Token.objects.get(user=ann).key
    # the token works on the API
    api.credentials(HTTP_AUTHORIZATION=f"Token {good.json()['token']}")
    assert api.get("/api/projects/").status_code == 200
    api.credentials()
    assert api.post("/api/auth/token/", {"username": "ann"}, format="json").status_code == 400
    bad = [api.post("/api/auth/token/", {"username": "ann", "password": "nope"}, format="json").status_code
           for _ in range(LIMIT)]
    assert bad[0] == 400 and bad[-1] == 429
    locked = api.post("/api/auth/token/", {"username": "ann", "password": "right-pw-123"}, format="json")
    assert locked.status_code == 429 and "Too many failed logins" in locked.json()["detail"]


def test_token_endpoint_is_throttled(ann, settings):
    rates = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "auth": "3/minute"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    from rest_framework.throttling import SimpleRateThrottle

    old = SimpleRateThrottle.THROTTLE_RATES
    SimpleRateThrottle.THROTTLE_RATES = rates
    try:
        api = APIClient(REMOTE_ADDR="10.2.0.1")
        codes = [api.post("/api/auth/token/", {"username": "ann", "password": "right-pw-123"},
                          format="json").status_code for _ in range(5)]
    finally:
        SimpleRateThrottle.THROTTLE_RATES = old
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]


def test_api_user_throttle(ann):
    from rest_framework.throttling import SimpleRateThrottle

    old = SimpleRateThrottle.THROTTLE_RATES
    SimpleRateThrottle.THROTTLE_RATES = {**old, "user": "4/minute"}
    try:
        api = APIClient()
        api.force_authenticate(ann)
        codes = [api.get("/api/projects/").status_code for _ in range(6)]
    finally:
        SimpleRateThrottle.THROTTLE_RATES = old
    assert codes[:4] == [200] * 4 and codes[4:] == [429, 429]


def test_default_rates_are_configured_and_generous(settings):
    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    assert set(rates) >= {"anon", "user", "auth"}
    number, period = rates["user"].split("/")
    assert period.startswith("min") and int(number) >= 1000
