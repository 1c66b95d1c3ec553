"""Django settings, all from the environment.

Development defaults work with no variables set (SQLite under ./var, DEBUG on). Production: set
DJANGO_DEBUG=0, DJANGO_SECRET_KEY, DJANGO_ALLOWED_HOSTS and usually DATABASE_URL; then
`manage.py check --deploy` is clean.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from webapp import limits

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("WORKBENCH_VAR_DIR", BASE_DIR / "var")).resolve()


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if not value:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


DEBUG = _env_bool("DJANGO_DEBUG", True)

_DEV_SECRET = "dev-insecure-secret-key-only-for-local-development-do-not-deploy"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or (_DEV_SECRET if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG=0.")

ALLOWED_HOSTS = _env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = _env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "axes",
    "drf_spectacular",
    "django_htmx",
    "django_tasks",
    "django_tasks_db",
    "annotate",
    "training",
    "webapp",  # its system checks (webapp/checks.py)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every response (CONTENT_SECURITY_POLICY below).
    "csp.middleware.CSPMiddleware",
    # Database down (PostgreSQL restarting…): 503 + Retry-After instead of a 500. Outside everything that
    # touches the database (sessions, auth), inside the security headers.
    "webapp.middleware.DatabaseUnavailableMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    # Query strings and form fields: invalid Unicode, NUL and over-long values are a 400 naming the field.
    "webapp.boundary.BoundaryMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Login everywhere: every view needs a logged-in user unless marked @login_not_required
    # (the login page; the REST API, which authenticates tokens itself and answers 401/403).
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # django-axes: lockout after repeated failed logins; must stay the last middleware.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Failed logins (login page and POST /api/auth/token/): after this many in a row for one username, or from one
# address, logging in is refused for the cool-off time with a clear message (429). A success resets the count.
AXES_FAILURE_LIMIT = int(os.environ.get("WORKBENCH_LOGIN_FAILURE_LIMIT", "10"))
AXES_COOLOFF_TIME = float(os.environ.get("WORKBENCH_LOGIN_COOLOFF_MINUTES", "15")) / 60  # hours
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "webapp.auth.lockout_response"
AXES_IPWARE_PROXY_COUNT = 1 if _env_bool("DJANGO_BEHIND_PROXY", False) else None
AXES_IPWARE_META_PRECEDENCE_ORDER = (
    ("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR") if _env_bool("DJANGO_BEHIND_PROXY", False) else ("REMOTE_ADDR",)
)

ROOT_URLCONF = "webapp.urls"

TEMPLATES = [
    {
        # Django's templates, except that stored lone surrogates render as U+FFFD instead of failing the page.
        "BACKEND": "webapp.boundary.SurrogateSafeTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "webapp.wsgi.application"
ASGI_APPLICATION = "webapp.asgi.application"

# --- Database -------------------------------------------------------------------------------------
# Embedded default: SQLite in WAL mode. Readers never block the writer; BEGIN IMMEDIATE takes the write
# lock at the start of each transaction, so two writers queue on the busy timeout instead of failing
# half-way with "database is locked" (a deferred transaction that upgrades from read to write cannot wait).
SQLITE_PATH = Path(os.environ.get("WORKBENCH_SQLITE_PATH", VAR_DIR / "db.sqlite3"))
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
else:
    SQLITE_PATH.parent.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": SQLITE_PATH,
            "OPTIONS": {
                "timeout": 30,  # seconds a writer waits for the lock (sqlite3 busy timeout)
                "transaction_mode": "IMMEDIATE",
                "init_command": (
                    "PRAGMA journal_mode=WAL;"
                    "PRAGMA synchronous=NORMAL;"
                    "PRAGMA busy_timeout=30000;"
                    "PRAGMA foreign_keys=ON;"
                ),
            },
            "TEST": {"NAME": os.environ.get("WORKBENCH_TEST_SQLITE_PATH") or None},
        }
    }
IS_SQLITE = DATABASES["default"]["ENGINE"].endswith("sqlite3")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", VAR_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
MEDIA_ROOT = VAR_DIR / "media"

# --- Security (production) ---------------------------------------------------------------------------
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_SSL_REDIRECT = _env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "0" if DEBUG else "31536000"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if _env_bool("DJANGO_BEHIND_PROXY", False) else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# django-csp 4 (its dict format): the pages load only their own static files; no inline scripts, styles or
# event handlers, no eval (htmx is configured without it in base.html). The API docs page loads Swagger UI from
# its CDN and relaxes this for itself (webapp/urls.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}
# Seconds a client is asked to wait (Retry-After) when the database is unavailable (webapp/middleware.py).
DATABASE_UNAVAILABLE_RETRY_AFTER = int(os.environ.get("WORKBENCH_DB_RETRY_AFTER", "5"))

# Uploads (prompt files): refuse bodies over this size with a clear message.
# The input limits are defined in webapp/limits.py (env-overridable) and enforced by webapp/boundary.py.
WORKBENCH_MAX_UPLOAD_BYTES = limits.MAX_UPLOAD_BYTES
WORKBENCH_MAX_BODY_BYTES = limits.MAX_BODY_BYTES
WORKBENCH_MAX_IMPORT_RECORD_BYTES = limits.MAX_IMPORT_RECORD_BYTES
WORKBENCH_MAX_JSON_DEPTH = limits.MAX_JSON_DEPTH
# Django's own cap on a non-file body: the import API takes a body up to the upload limit, so Django must not
# refuse it earlier (with its HTML 400); the boundary parser applies the smaller body limit everywhere else.
DATA_UPLOAD_MAX_MEMORY_SIZE = WORKBENCH_MAX_UPLOAD_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# --- Workbench roots ----------------------------------------------------------------------------------
# Every filesystem path a user can name in a form or API call must resolve inside one of these roots.
WORKBENCH_MODEL_ROOTS = [Path(p).resolve() for p in _env_list("WORKBENCH_MODEL_ROOTS", [str(VAR_DIR / "models")])]
WORKBENCH_DATA_ROOT = Path(os.environ.get("WORKBENCH_DATA_ROOT", VAR_DIR / "data")).resolve()
WORKBENCH_RUNS_ROOT = Path(os.environ.get("WORKBENCH_RUNS_ROOT", VAR_DIR / "runs")).resolve()
# `accelerate launch` prefix for queued runs on multi-GPU workers, e.g. "accelerate launch --num_processes 8".
WORKBENCH_LAUNCHER = os.environ.get("WORKBENCH_LAUNCHER", "")
WORKBENCH_HEARTBEAT_SECONDS = int(os.environ.get("WORKBENCH_HEARTBEAT_SECONDS", "10"))
WORKBENCH_STALE_AFTER_SECONDS = int(os.environ.get("WORKBENCH_STALE_AFTER_SECONDS", "120"))

# --- Queue (django-tasks, database backend: the queue lives in the same database) ---------------------
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

# --- REST API ---------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PARSER_CLASSES": [
        "webapp.boundary.BoundaryJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_RENDERER_CLASSES": [
        "webapp.boundary.SafeJSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    # Per-client request rates (env-configurable; generous: a human annotator makes a few requests a minute).
    # "auth" is the token endpoint's scope (it also counts towards the login lockout).
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("WORKBENCH_THROTTLE_ANON", "300/minute"),
        "user": os.environ.get("WORKBENCH_THROTTLE_USER", "6000/minute"),
        "auth": os.environ.get("WORKBENCH_THROTTLE_AUTH", "30/minute"),
    },
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 100,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "RLHF Workbench API",
    "DESCRIPTION": "Annotation queue, rankings, datasets and training runs.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Runs and jobs both have `kind` and `status` choices: name each enum after its model.
    "ENUM_NAME_OVERRIDES": {
        "TrainingRunKindEnum": "training.models.TrainingRun.Kind",
        "TrainingRunStatusEnum": "training.models.TrainingRun.Status",
        "JobKindEnum": "training.models.Job.Kind",
        "JobStatusEnum": "training.models.Job.Status",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
    # axes logs every login at INFO; lockouts are WARNINGs.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}
