#!/usr/bin/env python3
"""A stand-in for the Hugging Face Hub's file endpoint, for bora's download tests.

    python3 hf_mock.py PORT_FILE LOG_FILE REPO=DIR[:bad] ...

Serves GET /{REPO}/resolve/main/{FILE} from DIR with what the Hub sends: x-repo-commit, an
ETag (for files over 1 KiB an x-linked-etag with the SHA-256, as for LFS files; `:bad` gives a
wrong one), Range requests answered 206 with Content-Range. Missing files are 404. Writes the
port it listens on to PORT_FILE and one line per request ("path range") to LOG_FILE.
"""

import hashlib
import http.server
import os
import sys

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def main() -> None:
    port_file, log_file = sys.argv[1], sys.argv[2]
    repos = {}
    for arg in sys.argv[3:]:
        repo, spec = arg.split("=", 1)
        d, _, flag = spec.partition(":")
        repos[repo] = (d, flag == "bad")

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            rng = self.headers.get("Range", "")
            with open(log_file, "a") as f:
                f.write(f"{self.path} {rng}\n")
            for repo, (d, bad) in repos.items():
                prefix = f"/{repo}/resolve/main/"
                if self.path.startswith(prefix):
                    path = os.path.join(d, self.path[len(prefix):])
                    if os.path.isfile(path):
                        return self.send_file(path, rng, bad)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def send_file(self, path, rng, bad):
            data = open(path, "rb").read()
            start, end = 0, len(data) - 1
            if rng.startswith("bytes="):
                a, _, b = rng[6:].partition("-")
                start = int(a)
                end = int(b) if b else end
            body = data[start:end + 1]
            self.send_response(206 if rng else 200)
            self.send_header("x-repo-commit", COMMIT)
            if len(data) > 1024:
                sha = hashlib.sha256(data).hexdigest()
                if bad:
                    sha = "0" * 64
                self.send_header("x-linked-etag", f'"{sha}"')
                self.send_header("ETag", '"lfs-pointer"')
            else:
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
