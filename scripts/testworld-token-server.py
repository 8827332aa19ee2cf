"""The test world's token server: the bearer-token flow of Docker Hub, for the registry "tokenhub".

    python testworld-token-server.py PORT KEY.pem CERT.pem USER PASSWORD-FILE ISSUER

Serves GET /token?service=…&scope=repository:NAME:ACTIONS (the distribution token protocol):
basic auth with USER and the password in PASSWORD-FILE gets a JWT granting the scopes asked for;
no Authorization header gets one granting nothing (as Docker Hub's anonymous tokens); wrong
credentials get 401. Tokens are ES256, signed with KEY.pem, its self-signed CERT.pem in the `x5c`
header: the registry trusts them through `rootcertbundle: CERT.pem`. Each request is logged as one
line (status, user, scopes, user agent), never a credential or a token. Runs with the moto venv's python
(cryptography); nothing here is for production.
"""

import base64
import hmac
import json
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

PORT, KEY_FILE, CERT_FILE, USER, PASSWORD_FILE, ISSUER = sys.argv[1:7]
with open(KEY_FILE, "rb") as f:
    KEY = serialization.load_pem_private_key(f.read(), password=None)
with open(CERT_FILE, "rb") as f:
    CERT_DER = x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(claims):
    header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(CERT_DER).decode()]}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    r, s = decode_dss_signature(KEY.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def access(scopes):
    granted = []
    for scope in scopes:
        for one in scope.split(" "):
            parts = one.split(":")
            if len(parts) >= 3:
                granted.append({"type": parts[0], "name": ":".join(parts[1:-1]), "actions": parts[-1].split(",")})
    return granted


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path != "/token":
            self.reply(404, {"details": "not found"})
            return
        query = parse_qs(url.query)
        scopes = query.get("scope", [])
        user = ""
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                user, password = "", None
            with open(PASSWORD_FILE) as f:
                expected = f.read()
            if user != USER or password is None or not hmac.compare_digest(password, expected):
                self.log_message("401 user=%r scopes=%r", user, scopes)
                self.reply(401, {"details": "incorrect username or password"})
                return
            granted = access(scopes)
        elif header:
            self.log_message("401 unsupported Authorization scheme")
            self.reply(401, {"details": "unsupported authorization"})
            return
        else:
            granted = []
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user,
            "aud": query.get("service", [""])[0],
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "access": granted,
        }
        token = sign(claims)
        self.log_message("200 user=%r scopes=%r agent=%r", user, scopes, self.headers.get("User-Agent", ""))
        self.reply(200, {"token": token, "access_token": token, "expires_in": 300,
                         "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (time.strftime("%H:%M:%S"), fmt % args))
        sys.stderr.flush()


ThreadingHTTPServer(("127.0.0.1", int(PORT)), Handler).serve_forever()
