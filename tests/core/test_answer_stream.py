"""Streamed points are final: what an AnswerStream releases while an answer is decoded is a
prefix of what the final Grounding holds (same positions, stamps, ids, order), over
well-formed answers and over malformed and truncated ones.

The answers reach ground() through a scripted backend that hands a fixed text out in
random pieces through the Backend protocol's `on_text` hook (a stand-in for the model's
output, not for anything this test checks); tests/backends/test_streaming.py runs the
same property over the shipped model's real answers.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from molmo2_ros.core.answer_format import (
    ModelPoint, format_count_answer, format_point_answer, format_track_answer)
from molmo2_ros.core.backend import Generation, TextPiece
from molmo2_ros.core.grounder import ground
from molmo2_ros.core.grounding import Frame, Grounding, Task

T0 = 1_700_000_000_000_000_000


def frames(n: int) -> list[Frame]:
    return [Frame(np.zeros((12, 16, 3), np.uint8), T0 + i * 500_000_000, (640, 480), "cam") for i in range(n)]


class ScriptedAnswer:
    """Backend protocol over a fixed answer, streamed in random pieces of 1-6 characters."""

    name, model_id, compiles_on_first_use = "scripted", "scripted", False

    def __init__(self, text: str, seed: int = 0):
        self.text, self.rng = text, random.Random(seed)

    def generate(self, frames, prompt, *, max_new_tokens, progress=None, should_stop=None, on_text=None):
        times = [0.5 * i for i in range(len(frames))] if len(frames) > 1 else [1.0]
        pos = 0
        while on_text is not None and pos < len(self.text):
            n = self.rng.randint(1, 6)
            on_text(TextPiece(self.text[pos:pos + n], times, len(frames) > 1))
            pos += n
        return Generation(self.text, times, len(frames) > 1, 0.0, 0.0)


def key(p):
    return p.stamp_ns, p.x, p.y, p.object_id


def stream(text: str, task: Task, n_frames: int, seed: int = 0):
    """(points released in order, snapshots, the final Grounding)."""
    released, snapshots = [], []

    def on_points(new, partial):
        released.extend(new)
        snapshots.append(partial)

    final = ground(ScriptedAnswer(text, seed), frames(n_frames), "block", task, on_points=on_points)
    return released, snapshots, final


def assert_final_prefix(released, snapshots, final: Grounding, task: Task) -> int:
    """Everything released is in the final result with the same values, in the same order;
    labels are either not known yet ("") or final. Returns how many points were released."""
    if task is Task.TRACK:
        final_tracks = {t.id: t for t in final.tracks}
        per_track: dict[int, list] = {}
        for p in released:
            per_track.setdefault(p.object_id, []).append(p)
        for track_id, points in per_track.items():
            assert track_id in final_tracks, (track_id, final.answer)
            expected = final_tracks[track_id].points[:len(points)]
            assert [key(p) for p in points] == [key(p) for p in expected], final.answer
            assert all(p.label in ("", final_tracks[track_id].label) for p in points)
        for snap in snapshots:
            for track in snap.tracks:
                assert [key(p) for p in track.points] == \
                    [key(p) for p in final_tracks[track.id].points[:len(track.points)]]
                assert track.label in ("", final_tracks[track.id].label)
    else:
        expected = final.points[:len(released)]
        assert [key(p) for p in released] == [key(p) for p in expected], final.answer
        for snap in snapshots:
            assert [key(p) for p in snap.points] == [key(p) for p in final.points[:len(snap.points)]]
            assert all(p.label in ("", f.label) for p, f in zip(snap.points, final.points))
    return len(released)


def random_points(rng: random.Random, video: bool, n_frames: int) -> list[ModelPoint]:
    times = [0.5 * i for i in range(n_frames)] if video else [1.0]
    return [ModelPoint(rng.choice(times), rng.randint(1, 4), rng.uniform(0, 1000), rng.uniform(0, 1000))
            for _ in range(rng.randint(1, 12))]


def well_formed(rng: random.Random) -> tuple[str, Task, int]:
    task = rng.choice([Task.POINT, Task.COUNT, Task.TRACK])
    n_frames = 1 if task is not Task.TRACK and rng.random() < 0.3 else rng.randint(2, 16)
    points = random_points(rng, n_frames > 1, n_frames)
    if task is Task.TRACK:
        points = list({(p.t, p.object_id): p for p in points}.values())   # one point per object a frame
        return format_track_answer(points, "red block", separator=rng.choice(";\t")), task, n_frames
    render = format_count_answer if task is Task.COUNT else format_point_answer
    return render(points, "red block", video=n_frames > 1, separator=rng.choice(";\t")), task, n_frames


def test_well_formed_answers_stream_every_point_before_the_end():
    rng = random.Random(1)
    for case in range(200):
        text, task, n_frames = well_formed(rng)
        released, snapshots, final = stream(text, task, n_frames, seed=case)
        n = assert_final_prefix(released, snapshots, final, task)
        expected = sum(len(t.points) for t in final.tracks) if task is Task.TRACK else len(final.points)
        assert n == expected > 0, text                    # nothing left for the result alone
        last = snapshots[-1]
        labels = [p.label for t in last.tracks for p in t.points] if task is Task.TRACK else \
            [p.label for p in last.points]
        assert set(labels) == {"red block"}, text          # the closing tag made every label known


def malformed(rng: random.Random, text: str) -> str:
    """One of the damages a decoder can produce."""
    damage = rng.choice(["cut", "cut", "digit", "char", "delete", "repeat", "second_tag", "backwards"])
    if damage == "cut" or not text:                                    # token budget reached anywhere, mid-tag included
        return text[:rng.randint(0, len(text))]
    i = rng.randrange(len(text))
    if damage == "digit":
        return text[:i] + rng.choice("0123456789") + text[i:]
    if damage == "char":
        return text[:i] + rng.choice(' ;\t:,"<>/-x.') + text[i + 1:]
    if damage == "delete":
        return text[:i] + text[i + rng.randint(1, 5):]
    if damage == "repeat":                                 # a frame (and its ids) stated again
        start = text.find('coords="') + 8
        end = text.find('"', start)
        frame = text[start:end].split(";")[0].split("\t")[0]
        return text[:end] + ";" + frame + text[end:]
    if damage == "second_tag":                             # a second tag reusing the ids
        return text + " and " + text[:rng.randint(len(text) // 2, len(text))]
    start = text.find('coords="') + 8                     # a frame that goes back in time
    return text[:start] + "9.5 1 100 100;" + text[start:]


def test_malformed_and_truncated_answers_never_stream_what_the_result_lacks():
    rng = random.Random(2)
    for case in range(600):
        text, task, n_frames = well_formed(rng)
        for _ in range(rng.randint(1, 2)):
            text = malformed(rng, text)
        released, snapshots, final = stream(text, task, n_frames, seed=case)
        assert_final_prefix(released, snapshots, final, task)


@pytest.mark.parametrize("text,task,released_ids", [
    # the second <tracks> tag reuses id 1: its new id depends on every id of that tag, so
    # its points wait for the tag's coordinates to end; id 7 is new and goes at once
    ('<tracks coords="0.0 1 100 100 2 200 200">a</tracks><tracks coords="0.0 7 300 300 1 400 400;0.5 9 1 1">b</tracks>',
     Task.TRACK, [1, 2, 7, 10, 9]),
    # a track query's <points> become tracks only if no <tracks> tag follows: held
    ('<points coords="0.0 1 100 100 2 200 200">a</points>', Task.TRACK, []),
    # the number the text's end may have cut is not released
    ('<points coords="0.0 1 100 100 2 200 20', Task.POINT, [1]),
    # a repeated id in one frame is kept by the final parser, so it is released
    ('<tracks coords="0.0 1 100 100 1 120 120;0.5 1 130 130">a</tracks>', Task.TRACK, [1, 1, 1]),
    # a frame going back in time is skipped by the final parser, so it is not released
    ('<tracks coords="0.5 1 100 100;0.0 1 120 120;1.0 1 130 130">a</tracks>', Task.TRACK, [1, 1]),
])
def test_what_is_held_back(text, task, released_ids):
    released, snapshots, final = stream(text, task, 4)
    assert [p.object_id for p in released] == released_ids
    assert_final_prefix(released, snapshots, final, task)


def test_a_point_carries_no_label_until_its_tag_closes():
    text = '<points coords="0.0 1 100 100 2 200 200">red block</points>'
    released, snapshots, final = stream(text, Task.POINT, 2)
    assert [p.label for p in released] == ["", ""]                  # coordinates come first
    assert [p.label for p in snapshots[-1].points] == ["red block", "red block"]
    assert [p.label for p in final.points] == ["red block", "red block"]


def test_stamps_and_pixels_are_those_of_the_final_mapping():
    text = '<tracks coords="0.0 1 500 250;0.5 1 250 500">cup</tracks>'
    released, _, final = stream(text, Task.TRACK, 2)
    assert [(p.stamp_ns, p.x, p.y) for p in released] == [(T0, 320.0, 120.0), (T0 + 500_000_000, 160.0, 240.0)]
    assert [key(p) for p in released] == [key(p) for p in final.tracks[0].points]


def test_without_a_listener_the_backend_is_not_asked_to_stream():
    class NoStreaming(ScriptedAnswer):
        def generate(self, frames, prompt, *, max_new_tokens, progress=None, should_stop=None):
            return super().generate(frames, prompt, max_new_tokens=max_new_tokens)

    g = ground(NoStreaming('<points coords="1 1 500 500">a</points>'), frames(1), "a", Task.POINT)
    assert [key(p) for p in g.points] == [(T0, 320.0, 240.0, 1)]


def test_incremental_text_holds_a_character_cut_between_tokens():
    """Token ids = UTF-8 bytes (as byte-level tokenizers split rare characters): a piece is
    handed out only once its characters are whole; the pieces make up the final text."""
    from molmo2_ros.core.backend import IncrementalText

    text = "red blöck 日本 🙂 <points coords=\"1 1 500 500\">x</points>"
    pieces = []
    stream = IncrementalText(lambda ids: bytes(ids).decode("utf-8", errors="replace"), pieces.append, [1.0], False)
    for byte in text.encode():
        stream.add(byte)
    stream.finish(text)
    assert "".join(p.text for p in pieces) == text
    assert all("\ufffd" not in p.text for p in pieces) and len(pieces) > 20
