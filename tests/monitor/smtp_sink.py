#!/usr/bin/env python3
"""A real SMTP server on 127.0.0.1 for tests/monitor/run.sh: it speaks SMTP with
AUTH PLAIN, accepts every message, and appends to LOG what it was told:
`AUTH <user>:<password>` lines and each message's text. The port it listens on
(chosen by the system) is written to PORT_FILE once it accepts connections.

Usage: smtp_sink.py LOG PORT_FILE
(Python's smtpd module, which tests/container/run.sh uses, has no AUTH and is
gone from Python 3.12.)"""

import base64
import os
import socketserver
import sys

log_path, port_path = sys.argv[1], sys.argv[2]


def record(text):
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(text)


class Session(socketserver.StreamRequestHandler):
    def reply(self, line):
        self.wfile.write(line.encode() + b"\r\n")

    def read(self):
        return self.rfile.readline().decode("utf-8", "replace").rstrip("\r\n")

    def auth_plain(self, initial):
        if not initial:
            self.reply("334 ")
            initial = self.read()
        _, user, password = base64.b64decode(initial).decode().split("\0")
        record(f"AUTH {user}:{password}\n")
        self.reply("235 2.7.0 accepted")

    def handle(self):
        self.reply("220 sink ESMTP")
        while True:
            line = self.read()
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.wfile.write(b"250-sink\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n")
            elif verb == "HELO":
                self.reply("250 sink")
            elif verb == "AUTH":
                parts = line.split()
                self.auth_plain(parts[2] if len(parts) > 2 else "")
            elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 go on")
                text = []
                while True:
                    part = self.read()
                    if part == ".":
                        break
                    text.append(part[1:] if part.startswith("..") else part)
                record("MESSAGE\n" + "\n".join(text) + "\nEND MESSAGE\n")
                self.reply("250 queued")
            elif verb == "QUIT" or not line:
                self.reply("221 bye")
                return
            else:
                self.reply("502 not here")


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


with Server(("127.0.0.1", 0), Session) as server:
    with open(port_path + ".tmp", "w", encoding="utf-8") as port_file:
        port_file.write(str(server.server_address[1]))
    os.rename(port_path + ".tmp", port_path)
    server.serve_forever()
