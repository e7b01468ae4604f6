"""A minimal Django project configured like the incident's app (see ../../shared/INCIDENT.md)."""
import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "sluice-demo-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
ROOT_URLCONF = "incident.urls"
WSGI_APPLICATION = "incident.wsgi.application"
USE_TZ = True
TIME_ZONE = "Europe/Berlin"  # differs from the server's: Django sends SET TIME ZONE 'UTC' per connection

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",  # psycopg 3
        "HOST": os.environ.get("DJANGO_DB_HOST", "pooler"),
        "PORT": os.environ.get("DJANGO_DB_PORT", "5432"),
        "NAME": os.environ.get("DJANGO_DB_NAME", "app"),
        "USER": os.environ.get("DJANGO_DB_USER", "app"),
        "PASSWORD": os.environ.get("DJANGO_DB_PASSWORD", ""),
        # As in the incident: a new connection per request, behind a transaction pooler.
        "CONN_MAX_AGE": 0,
        "DISABLE_SERVER_SIDE_CURSORS": True,
    }
}
