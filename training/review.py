"""`molmo2-train review DATASET`: a local page to review and correct a manifest.

Shows each line's frames exactly as training samples them (a filmstrip), with its points,
tracks and count drawn; a person accepts a line, moves points by dragging or clicking,
adds or deletes points, sets "none", edits the query, or drops the line, and saves. Saving
rewrites DATASET atomically (temporary file, then rename); the file as it was before the
first save is kept as DATASET.orig (never overwritten) and the one before each save as
DATASET.prev. Served by the standard library's http.server on 127.0.0.1 only; the page is
plain HTML and JavaScript (review_page.html).

Only the page itself may save. Any web page open in the same browser can send requests to
127.0.0.1 (a form or `fetch` with `text/plain` needs no permission), so a save must carry all
of: no Origin or the server's own, `Content-Type: application/json`, and the per-session token
that the server writes into the page it serves (another origin cannot read it). Refused writes
change nothing, not even the edits held in memory.
"""
from __future__ import annotations

import argparse
import hmac
import json
import os
import secrets
import shutil
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np

from molmo2_ros.training.dataset import LoadStats, ManifestError, Recordings, read_manifest, row_to_example

PAGE = Path(__file__).with_name("review_page.html")
TOKEN_HEADER = "X-Review-Token"           # the page sends its session token in this header
TOKEN_SLOT = "__REVIEW_TOKEN__"           # where review_page.html receives it


class Review:
    """The manifest under review: its lines, their frames (loaded on demand) and edits."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"dataset {self.path} does not exist")
        self.rows = read_manifest(self.path)
        self.state: dict[int, dict] = {}        # line index -> edits (query, task, points, drop, reviewed)
        self._examples: dict[int, object] = {}
        self._recordings = Recordings()          # each recording read once
        self._lock = threading.Lock()            # the page asks for a line's frames in parallel

    def summary(self) -> list[dict]:
        out = []
        for i, row in enumerate(self.rows):
            edit = self.state.get(i, {})
            out.append({"index": i, "where": row["_where"], "task": edit.get("task", row.get("task", "")),
                        "query": edit.get("query", row.get("query", "")), "drop": edit.get("drop", False),
                        "reviewed": edit.get("reviewed", bool(row.get("reviewed")))})
        return out

    def example(self, i: int):
        """The line as training loads it (frames sampled as the node samples them, truth
        points on their frames)."""
        with self._lock:
            if i not in self._examples:
                self._examples[i] = row_to_example(dict(self.rows[i]), self.path.parent, LoadStats(),
                                                   self._recordings)
            return self._examples[i]

    def line(self, i: int) -> dict:
        """A line for the page: its frames' sizes and its points per frame (pixels)."""
        row = self.rows[i]
        base = {"index": i, "where": row["_where"], "task": row.get("task", ""), "query": row.get("query", ""),
                "reviewed": bool(row.get("reviewed")), "drop": False}
        try:
            example = self.example(i)
        except ManifestError as exc:
            return {**base, "error": str(exc), "frames": [], "points": []}
        points = [{"frame": example.frame_index(p.stamp_ns), "id": p.object_id, "x": p.x, "y": p.y}
                  for p in example.points]
        frames = [{"stamp_ns": f.stamp_ns, "width": f.source_size[0], "height": f.source_size[1]}
                  for f in example.frames]
        return {**base, "error": None, "points": points, "frames": frames, **self.state.get(i, {})}

    def frame_png(self, i: int, f: int) -> bytes:
        image = self.example(i).frames[f].image
        ok, data = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
        if not ok:
            raise ValueError("could not encode the frame")
        return data.tobytes()

    def update(self, changes: dict) -> None:
        for key, edit in changes.items():
            i = int(key)
            if not 0 <= i < len(self.rows):
                raise ValueError(f"no line {i}")
            self.state[i] = {k: edit[k] for k in ("query", "task", "points", "drop", "reviewed") if k in edit}

    def corrected_rows(self) -> list[dict]:
        out = []
        for i, row in enumerate(self.rows):
            row = {k: v for k, v in row.items() if k != "_where"}
            edit = self.state.get(i)
            if edit is None:
                out.append(row)
                continue
            if edit.get("drop"):
                continue
            if "query" in edit:
                row["query"] = edit["query"]
            if "task" in edit:
                row["task"] = edit["task"]
            if "points" in edit:
                row["points"] = self._points_out(i, row, edit["points"])
            if edit.get("reviewed"):
                row["reviewed"] = True
            out.append(row)
        return out

    def _points_out(self, i: int, row: dict, points: list[dict]) -> list[dict]:
        frames = self.example(i).frames
        kept = [p for p in row.get("points", []) if p.get("occluded")]   # hidden frames stay as they were
        image = "image" in row
        for p in sorted(points, key=lambda p: (p["frame"], p["id"])):
            out = {"id": int(p["id"]), "x": round(float(p["x"]), 1), "y": round(float(p["y"]), 1)}
            if not image:
                out = {"stamp_ns": frames[int(p["frame"])].stamp_ns, **out}
            kept.append(out)
        return kept

    def save(self) -> dict:
        """Write the corrected manifest; never loses the original (see the module doc)."""
        original = self.path.with_name(self.path.name + ".orig")
        if not original.exists():
            shutil.copy2(self.path, original)
        shutil.copy2(self.path, self.path.with_name(self.path.name + ".prev"))
        rows = self.corrected_rows()
        tmp = self.path.with_name(f".{self.path.name}.saving")
        with open(tmp, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return {"saved": str(self.path), "lines": len(rows), "original": str(original)}


def make_server(review: Review, port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:port (0 = any free port) serving the page and its API."""
    token = secrets.token_urlsafe(32)
    page = PAGE.read_text().replace(TOKEN_SLOT, token).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):   # quiet: the terminal shows what matters
            pass

        def _send(self, status, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Security-Policy", "frame-ancestors 'none'")   # no clickjacking frame
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass   # the page moved on (e.g. to another line) before this frame arrived

        def _json(self, value, status=HTTPStatus.OK) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def _local(self) -> bool:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
            if host in ("127.0.0.1", "localhost"):
                return True
            self._json({"error": "only served to 127.0.0.1/localhost"}, HTTPStatus.FORBIDDEN)
            return False

        def _own_page(self) -> bool:
            """A write from the page this server served (see the module doc); else refused."""
            port = self.server.server_address[1]
            origin = self.headers.get("Origin")
            kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            given = (self.headers.get(TOKEN_HEADER) or "").encode()
            if origin is not None and origin not in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
                refusal = (f"writes are accepted from this review page only, not from {origin}",
                           HTTPStatus.FORBIDDEN)
            elif kind != "application/json":
                refusal = ("writes must be Content-Type: application/json", HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
            elif not hmac.compare_digest(given, token.encode()):
                refusal = ("missing or wrong session token: reload the review page", HTTPStatus.FORBIDDEN)
            else:
                return True
            self._json({"error": refusal[0]}, refusal[1])
            return False

        def do_GET(self):
            if not self._local():
                return
            parts = [p for p in urlparse(self.path).path.split("/") if p]
            try:
                if not parts:
                    self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
                elif parts == ["api", "lines"]:
                    self._json({"dataset": str(review.path), "lines": review.summary()})
                elif len(parts) == 3 and parts[:2] == ["api", "line"]:
                    self._json(review.line(int(parts[2])))
                elif len(parts) == 3 and parts[0] == "frame":
                    self._send(HTTPStatus.OK, review.frame_png(int(parts[1]), int(parts[2].split(".")[0])),
                               "image/png")
                else:
                    self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
            except (ValueError, IndexError, ManifestError) as exc:
                self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)

        def do_POST(self):
            if not self._local():
                return
            if urlparse(self.path).path != "/api/save":
                self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
                return
            if not self._own_page():
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                review.update(body.get("changes", {}))
                self._json(review.save())
            except (ValueError, KeyError, TypeError, OSError) as exc:
                self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="molmo2-train review",
                                     description="Review and correct a manifest in the browser (localhost only).")
    parser.add_argument("dataset", help="JSONL manifest to review (saved in place; the original kept as .orig)")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default %(default)s; 0 = any)")
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")
    args = parser.parse_args(argv)
    try:
        review = Review(args.dataset)
        server = make_server(review, args.port)
    except (OSError, ManifestError) as exc:
        print(f"molmo2-train review: {exc}", file=sys.stderr)
        return 2
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"reviewing {len(review.rows)} lines of {args.dataset} at {url} (Ctrl-C to stop)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
