"""Logging in: the lockout answer of django-axes (repeated failed logins per username and per address) and the
token endpoint that annotators' scripts use instead of asking an admin for a token.

Both doors count failures in the same place (axes' attempt records): a script guessing passwords on
``POST /api/auth/token/`` locks the same username as the login page does.
"""

from __future__ import annotations

from axes.helpers import get_cool_off, get_failure_limit
from django.contrib.auth import authenticate
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.decorators import api_view, authentication_classes, permission_classes, throttle_classes
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle, ScopedRateThrottle


def lockout_message(request: HttpRequest, credentials: dict | None = None) -> str:
    limit = get_failure_limit(request, credentials)
    cool_off = get_cool_off(request)
    minutes = max(1, round(cool_off.total_seconds() / 60)) if cool_off else None
    wait = f"Try again in {minutes} minute{'s' if minutes != 1 else ''}" if minutes else "Ask an admin to unlock it"
    return (
        f"Too many failed logins ({limit} in a row) for this username or from this address, so logging in is "
        f"blocked for now. {wait}, or ask an admin to reset your password."
    )


def lockout_response(request: HttpRequest, original_response=None, credentials: dict | None = None) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: 429 with a clear message; the login page again for browsers, JSON for the API."""
    message = lockout_message(request, credentials)
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": message, "code": "locked_out"}, status=status.HTTP_429_TOO_MANY_REQUESTS)
    form = AuthenticationForm(request, initial={"username": (credentials or {}).get("username", "")})
    return render(
        request, "registration/login.html", {"form": form, "locked_out": message},
        status=status.HTTP_429_TOO_MANY_REQUESTS,
    )


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False, style={"input_type": "password"})


@extend_schema(
    request=TokenRequestSerializer,
    responses={
        200: inline_serializer("AuthToken", {"token": serializers.CharField()}),
        400: OpenApiResponse(description="Wrong username or password, or a missing field."),
        429: OpenApiResponse(description="Too many attempts (throttled or locked out)."),
    },
    summary="Get your API token with your username and password",
    auth=[],
)
@api_view(["POST"])
@authentication_classes([])
@permission_classes([])
@throttle_classes([AnonRateThrottle, ScopedRateThrottle])
def obtain_token(request: Request) -> Response:
    body = TokenRequestSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    django_request = request._request  # axes marks the HttpRequest it sees as locked out
    user = authenticate(
        django_request, username=body.validated_data["username"], password=body.validated_data["password"]
    )
    if getattr(django_request, "axes_locked_out", False):
        return Response(
            {"detail": lockout_message(django_request, {"username": body.validated_data["username"]}),
             "code": "locked_out"},
            status=status.HTTP_429_TOO_MANY_REQUESTS,
        )
    if user is None or not user.is_active:
        return Response(
            {"non_field_errors": ["Unable to log in with this username and password."]},
            status=status.HTTP_400_BAD_REQUEST,
        )
    token, _ = Token.objects.get_or_create(user=user)
    return Response({"token": token.key})


obtain_token.cls.throttle_scope = "auth"
