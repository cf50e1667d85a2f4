"""An answer's points while it is decoded: only what nothing that follows can change.

Public API:
    AnswerStream(task, frames)     feed(piece) -> (new points, changed); snapshot() -> PartialAnswer
    PartialAnswer(points, tracks)  what is final so far (a prefix of the final Grounding's)

The stream re-reads the text so far with the answer parser (answer_parser.parse_tags:
the same rules as the final parse) and maps points with the same mapping, so a point
it releases has the position, stamp and id the final Grounding gives it. What the rest
of the answer could still change is held back:
- a number the text's end may have cut ("12" of "120"): the parser only returns points
  whose numbers are followed by a separator;
- the id of a later <tracks> tag's point whose id an earlier tag already uses: the new id
  depends on every id of that tag, so such points wait until its coordinates end;
- for a track query, the points of <points> tags: they become tracks only if no
  <tracks> tag follows, which only the whole answer tells.
Released points are never retracted. Labels: Molmo2 states a tag's label after its
coordinates, so a released point carries label "" until its tag's label is complete;
`snapshot()` fills it in from then on (an empty label means "not known yet", never
"no label"), while positions, stamps and ids never change.

What is released, in order: for point/count/ask queries the final `points` (answer
order); for track queries each track's points (the final tracks' points, by stamp: the
parser skips a <tracks> frame that goes back in time). A track query's flattened
`points` in the snapshot are the track points so far, by stamp then id, as the final.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

from molmo2_ros.core.answer_format import ModelPoint
from molmo2_ros.core.answer_parser import ParsedTag, parse_tags, track_ids
from molmo2_ros.core.backend import TextPiece
from molmo2_ros.core.grounding import Frame, GroundedPoint, Task, Track
from molmo2_ros.core.mapping import map_points

# Only text holding one of these can complete a number, a tag's coordinates or a label.
_COMPLETING = frozenset(" \t\n;:,\"<>/")


@dataclass
class PartialAnswer:
    """The final part of an answer so far. `points`: point/count/ask: the final points
    so far, in order; track: the track points so far, by stamp then id. `tracks`: track
    queries only, each track's points so far by stamp."""

    points: list[GroundedPoint] = field(default_factory=list)
    tracks: list[Track] = field(default_factory=list)


@dataclass
class _Released:
    tag_start: int              # which tag (by where it opens) the point came from
    point: GroundedPoint        # label "" until the tag's label is complete


class AnswerStream:
    """Feed an answer's pieces as they are decoded; collect its final points."""

    def __init__(self, task: Task | str, frames: Sequence[Frame]):
        self.task = Task(task)
        self.frames = list(frames)
        self.text = ""
        self._frame_times: list[float] | None = None
        self._released: list[_Released] = []
        self._counts: dict[int, int] = {}        # tag start -> points of it released
        self._labels: dict[int, str] = {}        # tag start -> its complete label

    def feed(self, piece: TextPiece) -> tuple[list[GroundedPoint], bool]:
        """Add the next piece of the answer: (the points it completed, in release order
        (track queries: object_id is the track id); whether the snapshot changed: new
        points, or the label of released points now known)."""
        self._frame_times = list(piece.frame_times)
        self.text += piece.text
        if not _COMPLETING.intersection(piece.text):
            return [], False
        tags, _ = parse_tags(self.text, [])
        new: list[GroundedPoint] = []
        labelled = False
        earlier_track_ids: set[int] = set()
        for tag in tags:
            if tag.label_done and tag.start not in self._labels:
                self._labels[tag.start] = tag.label
                labelled = labelled or (self._counts.get(tag.start, 0) > 0 and tag.label != "")
            if self.task is not Task.TRACK:
                new += self._release(tag, tag.points)
            elif tag.kind == "tracks":
                points = self._final_track_ids(tag, earlier_track_ids)
                new += self._release(tag, points)
                earlier_track_ids |= {p.object_id for p in points}   # all of them: a later tag exists
        return new, bool(new) or labelled

    def _final_track_ids(self, tag: ParsedTag, earlier_ids: set[int]) -> list[ModelPoint]:
        """The tag's points with their final track ids, up to the first one still unknown."""
        if tag.coords_done:
            renumber = track_ids({p.object_id for p in tag.points}, earlier_ids)
            return [replace(p, object_id=renumber.get(p.object_id, p.object_id)) for p in tag.points]
        known = []
        for p in tag.points:
            if p.object_id in earlier_ids:
                break
            known.append(p)
        return known

    def _release(self, tag: ParsedTag, points: list[ModelPoint]) -> list[GroundedPoint]:
        done = self._counts.get(tag.start, 0)
        fresh = [replace(p, label="") for p in points[done:]]
        if not fresh:
            return []
        self._counts[tag.start] = len(points)
        grounded, _ = map_points(fresh, self.frames, self._frame_times)
        label = self._labels.get(tag.start, "")
        grounded = [replace(g, label=label) for g in grounded]
        self._released += [_Released(tag.start, g) for g in grounded]
        return grounded

    def snapshot(self) -> PartialAnswer:
        """Everything released so far, labels filled in where their tags' are complete."""
        points = [replace(r.point, label=self._labels.get(r.tag_start, "")) for r in self._released]
        if self.task is not Task.TRACK:
            return PartialAnswer(points=points)
        by_id: dict[int, list[GroundedPoint]] = {}
        for p in points:
            by_id.setdefault(p.object_id, []).append(p)
        tracks = [Track(id=i, label=next((p.label for p in by_id[i] if p.label), ""),
                        points=sorted(by_id[i], key=lambda g: g.stamp_ns)) for i in sorted(by_id)]
        return PartialAnswer(points=sorted(points, key=lambda g: (g.stamp_ns, g.object_id)), tracks=tracks)
