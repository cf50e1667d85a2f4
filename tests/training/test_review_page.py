"""`molmo2-train review`: the page in a real headless browser. Open a generated dataset,
correct a point by clicking, set "none" on a line, drop another, save by keyboard: the
file holds the new truth and the original is kept beside it."""
import functools
import http.server
import json
import socket
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from molmo2_ros.training.review import Review, make_server
from molmo2_ros.training.shapes_tasks import make_example

sys.path.insert(0, str(Path(__file__).parent))
from browser import chromium, click_image, frame_canvases, press, wait_status  # noqa: E402
from manifests import write_image_manifest  # noqa: E402


@pytest.fixture
def served(tmp_path):
    manifest = write_image_manifest(tmp_path / "data", n_images=4, queries_per_image=1)
    lines = manifest.read_text().splitlines()
    wrong = json.loads(lines[0])
    wrong["points"][0]["x"] += 40          # the pre-label is off the object
    lines[0] = json.dumps(wrong)
    manifest.write_text("\n".join(lines) + "\n")
    server = make_server(Review(manifest), 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield manifest, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_correct_a_point_by_clicking_and_save(served, tmp_path):
    manifest, url = served
    before = manifest.read_text()
    truth = make_example("image_point", 0).points[0]
    wrong = json.loads(before.splitlines()[0])["points"][0]
    with chromium(tmp_path / "profile") as driver:
        driver.get(url)
        (canvas,) = frame_canvases(driver, 1)
        click_image(driver, canvas, wrong["x"], wrong["y"])    # select the wrong point
        click_image(driver, canvas, truth.x, truth.y)          # and put it where the object is
        press(driver, "j")                                     # next line
        frame_canvases(driver, 1)
        press(driver, "n")                                     # "none": no such object here
        press(driver, "j")
        frame_canvases(driver, 1)
        press(driver, "d")                                     # drop the third line
        press(driver, "s")
        status = wait_status(driver, "saved")
    assert "saved 3 lines" in status
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert len(rows) == 3
    (point,) = rows[0]["points"]
    assert abs(point["x"] - truth.x) <= 1.0 and abs(point["y"] - truth.y) <= 1.0, (point, truth)
    assert rows[1]["points"] == []
    assert rows[2] == json.loads(before.splitlines()[3])       # line 3 dropped, line 4 untouched
    assert Path(str(manifest) + ".orig").read_text() == before  # the original is never lost


def test_served_on_localhost_only(served):
    manifest, url = served
    port = int(url.rsplit(":", 1)[1].strip("/"))
    addresses = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
    for address in addresses:   # the machine's other addresses do not answer
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=2).close()
    request = urllib.request.Request(url + "api/lines", headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as info:   # DNS rebinding: a foreign Host is refused
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 403
    lines = json.loads(urllib.request.urlopen(url + "api/lines", timeout=10).read())["lines"]
    assert len(lines) == 4


def test_tracks_are_corrected_per_frame(tmp_path):
    """A track line from a recording: the selected object is placed on another frame (its own
    point there), and Shift+click adds a second object."""
    from manifests import write_scene_recording

    from molmo2_ros.sim.shapes_world import make_clip

    clip = make_clip(3, n_frames=16, fps=10, size=(160, 120), n_objects=1, start_ns=10**18)
    write_scene_recording(tmp_path / "rec", clip)
    stamps = clip.stamps_ns[0:16:5]                        # the frames a 2 fps window samples
    obj = clip.objects[0][0]
    line = {"recording": "rec", "topic": "/camera/image_raw", "start_ns": stamps[0], "end_ns": stamps[-1],
            "task": "track", "query": obj.label,
            "points": [{"stamp_ns": s, "id": 1, "x": obj.cx, "y": obj.cy} for s in stamps[:2]]}
    manifest = tmp_path / "track.jsonl"
    manifest.write_text(json.dumps(line) + "\n")
    server = make_server(Review(manifest), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with chromium(tmp_path / "profile") as driver:
            driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
            canvases = frame_canvases(driver, 4)
            click_image(driver, canvases[0], obj.cx, obj.cy)              # select object 1
            click_image(driver, canvases[3], 100, 50)                     # its point on frame 4
            click_image(driver, canvases[2], 30, 90, shift=True)          # a new object on frame 3
            press(driver, "s")
            wait_status(driver, "saved")
    finally:
        server.shutdown()
        server.server_close()
    (row,) = [json.loads(x) for x in manifest.read_text().splitlines()]
    points = {(p["stamp_ns"], p["id"]): (p["x"], p["y"]) for p in row["points"]}
    assert set(points) == {(stamps[0], 1), (stamps[1], 1), (stamps[3], 1), (stamps[2], 2)}
    assert all(abs(a - b) <= 1 for a, b in zip(points[(stamps[3], 1)], (100, 50)))
    assert all(abs(a - b) <= 1 for a, b in zip(points[(stamps[2], 2)], (30, 90)))


def test_another_site_open_in_the_browser_cannot_save(served, tmp_path):
    """A page of another origin (here another local port) posts to the review server as any
    web page can: a no-cors text/plain fetch and a form. Both reach the server and are refused."""
    manifest, url = served
    before = manifest.read_text()
    evil = tmp_path / "evil"
    evil.mkdir()
    body = json.dumps({"changes": {"0": {"points": []}}})
    (evil / "index.html").write_text(f"""<!doctype html><html><body>
<form id="f" method="POST" action="{url}api/save" enctype="text/plain" target="sink">
<input name='{body[:-1]}, "pad": "' value='"}}'></form><iframe name="sink"></iframe>
<script>
fetch("{url}api/save", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
                         body: {json.dumps(body)}}})
  .then(() => {{
    document.querySelector("iframe").onload = () => {{ document.title = "sent"; }};   // the form's answer
    document.getElementById("f").submit();
  }});
</script></body></html>""")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(evil))
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with chromium(tmp_path / "profile") as driver:
            from selenium.webdriver.support.ui import WebDriverWait

            driver.get(f"http://127.0.0.1:{other.server_address[1]}/")
            WebDriverWait(driver, 30).until(lambda d: d.title == "sent")   # both requests answered
    finally:
        other.shutdown()
        other.server_close()
    assert manifest.read_text() == before
    assert not Path(str(manifest) + ".orig").exists()
