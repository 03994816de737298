"""A mail server for idsync's end-to-end tests (aiosmtpd, loopback only).

Every message it accepts is written to OUT as one JSON file, NNNN.json,
holding the envelope (`mail_from`, `rcpt_tos`), the user the client logged in
as (`login`, or null), the headers `from`, `to` and `subject` and the text
`body`, decoded (folded lines joined, transfer encodings undone): written
under a temporary name, then renamed, so a reader never sees half a file.

With --user, clients must log in (AUTH PLAIN or LOGIN, allowed without TLS:
it is loopback) as that user with the password in the environment variable
named by --password-env; a wrong password is refused with 535.

Runs until SIGTERM or SIGINT, and at most --max-seconds.
"""

import argparse
import email
import email.policy
import json
import os
import pathlib
import signal
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Folder:
    def __init__(self, out):
        self.out = out
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            n = self.count
        message = email.message_from_bytes(
            envelope.original_content, policy=email.policy.default
        )
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "login": session.auth_data if session.authenticated else None,
            "from": str(message["from"]),
            "to": str(message["to"]),
            "subject": str(message["subject"]),
            "content_type": message.get_content_type(),
            "body": message.get_content(),
        }
        tmp = self.out / f".{n:04}.tmp"
        tmp.write_text(json.dumps(record))
        tmp.rename(self.out / f"{n:04}.json")
        return "250 OK"


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        # Not `handled`: aiosmtpd answers a failure with 535 itself.
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    return check


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--user")
    parser.add_argument("--password-env")
    parser.add_argument("--max-seconds", type=float, default=300)
    args = parser.parse_args()

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    auth = {}
    if args.user:
        password = os.environ[args.password_env]
        auth = {
            "authenticator": authenticator(args.user, password),
            "auth_required": True,
            "auth_require_tls": False,
        }
    controller = Controller(
        Folder(out), hostname="127.0.0.1", port=args.port, ready_timeout=10, **auth
    )
    controller.start()
    print(f"listening on 127.0.0.1:{args.port}", flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait(args.max_seconds)
    controller.stop()


if __name__ == "__main__":
    main()
