"""`molmo2-train review` refuses every write that is not its own page's: a real server
process (the console command), real HTTP requests. Any web page open in the reviewer's
browser can POST to 127.0.0.1 (text/plain needs no CORS preflight), so the cross-origin
request that used to rewrite the manifest, and its variants, must leave it unchanged."""
import http.client
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from molmo2_ros.training.review import Review, make_server

sys.path.insert(0, str(Path(__file__).parent))
from manifests import write_image_manifest  # noqa: E402

BIN = Path(sys.executable).parent
EVIL = {"changes": {"0": {"points": []}}}


@pytest.fixture
def server(tmp_path):
    """The review command on a free port: (manifest, port, session token read from its page)."""
    manifest = write_image_manifest(tmp_path / "data", n_images=2, queries_per_image=1)
    proc = subprocess.Popen([str(BIN / "molmo2-train"), "review", str(manifest), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        said = ""
        while not (match := re.search(r"at http://127\.0\.0\.1:(\d+)/", said)):
            line = proc.stdout.readline()       # the command says where it serves, then serves
            assert line, (said, proc.wait(timeout=30))
            said += line
        port = int(match.group(1))
        yield manifest, port, page_token(port)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def page_token(port) -> str:
    """The session token as the page carries it (what review_page.html sends back)."""
    status, page = request(port, "GET", "/")
    assert status == 200
    return re.search(r'name="review-token" content="([^"]+)"', page.decode()).group(1)


def request(port, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def save(port, body, **headers):
    return request(port, "POST", "/api/save", json.dumps(body).encode(), headers)


def rows(manifest):
    return [json.loads(x) for x in manifest.read_text().splitlines()]


def test_writes_from_anywhere_but_the_page_change_nothing(server):
    manifest, port, token = server
    before = manifest.read_text()
    own = f"http://127.0.0.1:{port}"
    refused = {
        "the issue's curl: cross-origin text/plain": {"Origin": "http://evil.example", "Content-Type": "text/plain"},
        "cross-origin JSON": {"Origin": "http://evil.example", "Content-Type": "application/json"},
        "cross-origin with the token": {"Origin": "http://evil.example", "Content-Type": "application/json",
                                        "X-Review-Token": token},
        "another local port": {"Origin": "http://127.0.0.1:1", "Content-Type": "application/json",
                               "X-Review-Token": token},
        "sandboxed frame (Origin: null)": {"Origin": "null", "Content-Type": "application/json",
                                           "X-Review-Token": token},
        "no Origin, no token": {"Content-Type": "application/json"},
        "no Origin, wrong token": {"Content-Type": "application/json", "X-Review-Token": "guess"},
        "own origin, no token": {"Origin": own, "Content-Type": "application/json"},
        "own origin and token, text/plain": {"Origin": own, "Content-Type": "text/plain", "X-Review-Token": token},
        "own origin and token, form": {"Origin": own, "Content-Type": "application/x-www-form-urlencoded",
                                       "X-Review-Token": token},
    }
    for case, headers in refused.items():
        status, body = save(port, EVIL, **headers)
        assert status in (403, 415), (case, status, body)
        assert json.loads(body)["error"], case
        assert manifest.read_text() == before, case
    assert not list(manifest.parent.glob("train.jsonl.*")), "a refused write made a backup, so it got far"

    # The page's own save (what review_page.html sends) is accepted, and carries none of the
    # refused changes: they never reached the edits held in memory.
    status, body = save(port, {"changes": {}}, Origin=own, **{"Content-Type": "application/json",
                                                              "X-Review-Token": token})
    assert status == 200, body
    assert rows(manifest) == [json.loads(x) for x in before.splitlines()]
    status, body = save(port, EVIL, **{"Content-Type": "application/json; charset=utf-8", "X-Review-Token": token})
    assert status == 200, body                    # no Origin (not a browser) but the page's token
    assert rows(manifest)[0]["points"] == []


def test_each_server_has_its_own_token_and_the_page_may_not_be_framed(server):
    manifest, port, token = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/")
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.getheader("Content-Security-Policy") == "frame-ancestors 'none'"
    other = make_server(Review(manifest), 0)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        assert page_token(other.server_address[1]) != token
    finally:
        other.shutdown()
        other.server_close()
