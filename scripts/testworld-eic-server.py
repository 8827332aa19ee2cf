"""The test world's EC2 Instance Connect: SendSSHPublicKey that keeps each pushed key for a while.

    python3 testworld-eic-server.py serve PORT [--ttl SECONDS] [--deny-user USER]... [--throttle-first N]
    python3 testworld-eic-server.py authorized-keys URL INSTANCE USER

`serve` answers the EC2 Instance Connect API (POST /, X-Amz-Target
AWSEC2InstanceConnectService.SendSSHPublicKey, JSON 1.1) as AWS does for the requests the agent
makes: a request must be SigV4-signed for the service `ec2-instance-connect` (its Authorization
header's credential scope is checked; the signature is not, as moto does not), name an instance
`i-…`, a user and an OpenSSH public key; the key is then kept for that instance and user for
--ttl seconds (AWS: 60). A user given with --deny-user gets AuthException, as a role whose
`ec2:osuser` condition names another user does. The first N pushes of --throttle-first get
ThrottlingException, as many builds pushing at once may. moto's own SendSSHPublicKey keeps
nothing, so this stands in for it.

GET /active-keys/INSTANCE/USER answers the keys still valid, one per line: what the instance
metadata's managed-ssh-keys give the real host's `eic_run_authorized_keys`. `authorized-keys`
prints them for an sshd's `AuthorizedKeysCommand` (it runs as AuthorizedKeysCommandUser, with
the system's python3; nothing but the standard library). Requests are logged one per line (action,
instance, user, the key's type), never a credential. Nothing here is for production.
"""

import json
import re
import sys
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INSTANCE = re.compile(r"^i-([0-9a-f]{8}|[0-9a-f]{17})$")
KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( .*)?$")
SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/ec2-instance-connect/aws4_request")


def serve(port, ttl, denied, throttled):
    keys = {}  # (instance, user) -> [(expiry, key)]
    lock = threading.Lock()
    throttle = [throttled]

    class Handler(BaseHTTPRequestHandler):
        def reply(self, status, body, content_type="application/x-amz-json-1.1"):
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, status, kind, message):
            self.reply(status, {"__type": kind, "Message": message})

        def do_GET(self):
            parts = self.path.strip("/").split("/")
            if parts == ["health"]:
                return self.reply(200, "ok\n", "text/plain")
            if len(parts) == 3 and parts[0] == "active-keys":
                now = time.time()
                with lock:
                    valid = [key for expiry, key in keys.get((parts[1], parts[2]), []) if expiry > now]
                return self.reply(200, "".join(key + "\n" for key in valid), "text/plain")
            self.reply(404, "not found\n", "text/plain")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            target = self.headers.get("X-Amz-Target", "")
            if target != "AWSEC2InstanceConnectService.SendSSHPublicKey":
                return self.error(400, "UnknownOperationException", f"unknown operation {target!r}")
            if not SCOPE.search(self.headers.get("Authorization", "")):
                return self.error(403, "MissingAuthenticationTokenException", "not signed for ec2-instance-connect")
            try:
                request = json.loads(body)
                instance, user, key = request["InstanceId"], request["InstanceOSUser"], request["SSHPublicKey"]
            except (ValueError, KeyError, TypeError):
                return self.error(400, "InvalidArgsException", "InstanceId, InstanceOSUser and SSHPublicKey are required")
            if not INSTANCE.match(instance):
                return self.error(400, "InvalidArgsException", "invalid instance id")
            if not user or not KEY.match(key):
                return self.error(400, "InvalidArgsException", "invalid user or key")
            with lock:
                throttle[0] -= 1
                throttled_now = throttle[0] >= 0
            if throttled_now:
                return self.error(400, "ThrottlingException", "Rate exceeded")
            if user in denied:
                return self.error(
                    400,
                    "AuthException",
                    f"User: arn:aws:sts::123456789012:assumed-role/build is not authorized to perform: "
                    f"ec2-instance-connect:SendSSHPublicKey on resource: {instance} (ec2:osuser {user})",
                )
            with lock:
                now = time.time()
                kept = [(expiry, k) for expiry, k in keys.get((instance, user), []) if expiry > now]
                kept.append((now + ttl, key))
                keys[(instance, user)] = kept
            self.reply(200, {"RequestId": str(uuid.uuid4()), "Success": True})

        def log_message(self, format, *args):
            pass

        def log_request(self, code="-", size="-"):
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} {self.command} {self.path.split('?')[0]} {code}\n")

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def authorized_keys(url, instance, user):
    with urllib.request.urlopen(f"{url.rstrip('/')}/active-keys/{instance}/{user}", timeout=5) as answer:
        sys.stdout.write(answer.read().decode())


def main(argv):
    if len(argv) >= 2 and argv[0] == "serve":
        port, ttl, denied, throttled, rest = int(argv[1]), 60.0, set(), 0, argv[2:]
        while rest:
            if rest[0] == "--ttl":
                ttl, rest = float(rest[1]), rest[2:]
            elif rest[0] == "--throttle-first":
                throttled, rest = int(rest[1]), rest[2:]
            elif rest[0] == "--deny-user":
                denied.add(rest[1])
                rest = rest[2:]
            else:
                sys.exit(f"unknown argument {rest[0]!r}")
        serve(port, ttl, denied, throttled)
    elif len(argv) == 4 and argv[0] == "authorized-keys":
        authorized_keys(*argv[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
