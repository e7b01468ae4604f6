"""Django 4.2 with psycopg 3 server-side binding (and psycopg's default
prepare_threshold) through Sluice, one connection per thread, CONN_MAX_AGE=0 as in
the incident. Usage: django_binding.py HOST PORT USER PASSWORD DB THREADS ROUNDS"""
import sys
import threading

import django
from django.conf import settings

host, port, user, password, db = sys.argv[1:6]
threads, rounds = int(sys.argv[6]), int(sys.argv[7])
settings.configure(
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": host,
            "PORT": port,
            "USER": user,
            "PASSWORD": password,
            "NAME": db,
            "CONN_MAX_AGE": 0,
            "DISABLE_SERVER_SIDE_CURSORS": True,
            # psycopg's default threshold, set explicitly: Django would otherwise leave
            # it off, and prepared statements are what this test is about.
            "OPTIONS": {"server_side_binding": True, "prepare_threshold": 5},
        }
    },
    USE_TZ=True,
    TIME_ZONE="Europe/Berlin",
)
django.setup()
from django.db import connection, transaction  # noqa: E402

errors = []


def run(n):
    try:
        for i in range(1, rounds + 1):
            with connection.cursor() as c:
                c.execute(f"SELECT %s::int * {n + 1}, (SELECT v FROM items WHERE id = %s)", [i, i])
                assert c.fetchone() == (i * (n + 1), f"item {i}"), (n, i)
            with transaction.atomic():
                with connection.cursor() as c:
                    c.execute(f"SELECT count(*) + {n} FROM items WHERE id <= %s", [i])
                    assert c.fetchone() == (i + n,), (n, i)
        connection.close()
    except Exception as e:  # reported below
        errors.append(repr(e))


ts = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
assert not errors, errors
print("ok")
