"""The gunicorn entry point of a subject: ``gunicorn --chdir bench wsgi_subject:app``.

Configured by the environment (set by run.py):
  BENCH_SUBJECT      subject name (see subjects.SUBJECTS)
  BENCH_BACKEND      HOST:PORT of the backend
  BENCH_SECRET_FILE  secret file for the signed subject
  BENCH_OPTIONS      JSON object: extra WSGIProxyApp arguments (longlived.py)
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import subjects

_host, _port = os.environ["BENCH_BACKEND"].rsplit(":", 1)
app = subjects.make_app(
    os.environ["BENCH_SUBJECT"], _host, int(_port),
    secret_file=os.environ.get("BENCH_SECRET_FILE") or None,
    under_server=True,
    options=json.loads(os.environ.get("BENCH_OPTIONS") or "{}"),
)
