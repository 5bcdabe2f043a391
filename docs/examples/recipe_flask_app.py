"""The Flask app of recipes 2 and 3 (docs/quickstart.rst).

It knows nothing about the proxy: the middleware in front of
it (recipe-flask-backend.ini) hands it the request as the
client made it.
"""

import os

from flask import Flask, jsonify, request, url_for

app = Flask(__name__)


@app.route("/whoami")
def whoami():
    return jsonify(
        # REMOTE_USER, set by the front's login
        user=request.remote_user,
        # the client's address, not the proxy's
        client=request.remote_addr,
        # the scheme, Host and mount point (SCRIPT_NAME)
        # the client used...
        scheme=request.scheme,
        host=request.host,
        script_root=request.script_root,
        # ...so the links the app builds work for the client
        link=url_for("whoami", _external=True),
        # which process answered
        pid=os.getpid(),
    )


def make_app(global_conf):
    """The app factory: use = call:recipe_flask_app:make_app"""
    return app
