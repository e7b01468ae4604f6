"""Two of the incident's paths: login (short, latency-critical) and a dashboard-like
read. sluice-bench replays the full scenario against the database directly."""
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.db import connection
from django.http import HttpResponse, JsonResponse


def health(request):
    return HttpResponse("ok")


def login(request):
    # Django's auth in one request: look the user up, check, write the session,
    # update last_login.
    if not User.objects.filter(username="demo").exists():
        User.objects.create_user("demo", password="demo")
    user = authenticate(request, username="demo", password="demo")
    if user is None:
        return HttpResponse("login failed", status=401)
    from django.contrib.auth import login as django_login

    django_login(request, user)
    return JsonResponse({"user": user.username})


def dashboard(request):
    with connection.cursor() as c:
        c.execute("SELECT count(*), now() FROM auth_user")
        users, now = c.fetchone()
    return JsonResponse({"users": users, "at": now.isoformat()})
