from csp.decorators import csp_update
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from webapp import auth

SWAGGER_CSP = {
    "script-src": ["https://cdn.jsdelivr.net"],
    "style-src": ["https://cdn.jsdelivr.net", "'unsafe-inline'"],
    "img-src": ["https://cdn.jsdelivr.net"],
}

urlpatterns = [
    path("login/", login_not_required(auth_views.LoginView.as_view()), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/schema/", login_not_required(SpectacularAPIView.as_view()), name="api-schema"),
    # Swagger UI: its init script is served as a file (the split view) and its assets come from its CDN, which
    # this page alone may load (plus the inline <style> of drf-spectacular's template).
    path("api/docs/", csp_update(SWAGGER_CSP)(SpectacularSwaggerSplitView.as_view(url_name="api-schema")),
         name="api-docs"),
    path("api/auth/token/", login_not_required(auth.obtain_token), name="api-token"),
    path("api/", include("annotate.api_urls")),
    path("api/", include("annotate.api_demonstration_urls")),
    path("api/", include("training.api_urls")),
    path("dashboard/", include("training.urls")),
    path("", include("annotate.urls_data")),
    path("", include("annotate.urls_demonstrations")),
    path("", include("annotate.urls")),
]
