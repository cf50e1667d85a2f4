"""Parse Molmo2 answers into model-space points, tracks and counts; never raises.

Public API:
    parse_answer(text) -> ParsedAnswer
    ParsedAnswer(points, tracks, count, warnings, truncated)
    parse_tags(text, warnings) -> (list[ParsedTag], text outside the tags)
        the tags one by one, with what is final in them (answer_stream reads answers
        as they are decoded with it)
    track_ids(tag_ids, earlier_ids) -> {id: new id}   ids a later <tracks> tag renumbers
    ModelPoint (re-exported from answer_format)

Accepted (see answer_format for the syntax itself):
- `<points coords="...">label</points>` and `<tracks coords="...">label</tracks>`,
  video (T in seconds) and image (T = 1-based image index) forms, several tags in one
  answer, text around them, other attributes (alt="..."), the self-closing `/>` form;
- frames separated by ";" (html-v2), a tab (html-v1), or ":" / "," (accepted by the
  official extractor); coordinates without zero padding;
- truncated output (generation hit its token budget): complete points are kept, a
  number cut by the end of the text is dropped, `truncated` is set and a warning says so;
- coordinates outside 0..1000: clipped, with a warning; duplicated object indices:
  kept, with a warning; malformed pieces: skipped, with a warning; a <tracks> frame
  whose time is earlier than the frame before it (tracks list frames in time order):
  skipped, with a warning, so every track's points stay in the order they were stated;
- counts: "... a total of N.", "There are N <points ...>", "There are none." (-> 0;
  the official counting regex misses this one), "No tracks available." (-> 0) and a
  bare integer answer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from molmo2_ros.core.answer_format import COORD_MAX, ModelPoint

__all__ = ["ModelPoint", "ParsedAnswer", "ParsedTag", "parse_answer", "parse_tags", "track_ids"]


@dataclass
class ParsedAnswer:
    """What an answer says, in model space.

    `points`: every point of every tag, in answer order (track points included).
    `tracks`: points of <tracks> tags by object id, in answer order; ids that clash
    between several <tracks> tags are renumbered (with a warning).
    `count`: the total the answer states (None when it states none).
    """

    points: list[ModelPoint] = field(default_factory=list)
    tracks: dict[int, list[ModelPoint]] = field(default_factory=dict)
    count: int | None = None
    warnings: list[str] = field(default_factory=list)
    truncated: bool = False


_OPEN_RE = re.compile(r"<\s*(points|tracks)\b", re.IGNORECASE)
_COORDS_RE = re.compile(r'\bcoords\s*=\s*"', re.IGNORECASE)
_CLOSE_RE = {kind: re.compile(rf"<\s*/\s*{kind}\s*>", re.IGNORECASE) for kind in ("points", "tracks")}
_FRAME_SEP_RE = re.compile(r"[;\t\n:,]")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_INDEX_RE = re.compile(r"\d+")
_TOTAL_RE = re.compile(r"\btotal\s+of\s+(\d+)", re.IGNORECASE)
_THERE_ARE_N_RE = re.compile(r"\bthere\s+(?:are|is)\s+(\d+)\b", re.IGNORECASE)
_NONE_RE = re.compile(r"\bthere\s+are\s+none\b|\bno\s+tracks\s+available\b", re.IGNORECASE)
_BARE_INT_RE = re.compile(r"\s*(\d+)\s*\.?\s*")


def parse_answer(text: str) -> ParsedAnswer:
    """Parse a model answer. Any input gives a result; problems become warnings."""
    result = ParsedAnswer()
    if not isinstance(text, str):
        result.warnings.append(f"answer is not text ({type(text).__name__}); nothing parsed")
        return result
    try:
        tags, outside = parse_tags(text, result.warnings)
        for tag in tags:
            result.truncated = result.truncated or not tag.label_done
            result.points.extend(tag.points)
            if tag.kind == "tracks":
                _add_tracks(tag.points, result)
        result.count = _stated_count(outside, has_tags=outside != text, warnings=result.warnings)
    except Exception as exc:  # a parser bug must not take the caller down with it
        return ParsedAnswer(warnings=[f"answer could not be parsed ({type(exc).__name__}: {exc})"])
    return result


@dataclass
class ParsedTag:
    """One <points>/<tracks> tag of an answer (a prefix of an answer, while it streams).

    `points` are the tag's complete points (a number the text's end may have cut is not
    one); `coords_done`: its coordinates can no longer grow (their closing quote, or the
    header's end, is in the text); `label_done`: its label can no longer change either.
    """

    kind: str
    start: int
    points: list[ModelPoint]
    label: str
    coords_done: bool
    label_done: bool


def parse_tags(text: str, warnings: list[str]) -> tuple[list[ParsedTag], str]:
    """Every tag of `text`, in order, and the text outside the tags."""
    outside, tags, pos = [], [], 0
    for opening in _OPEN_RE.finditer(text):
        if opening.start() < pos:
            continue  # inside the previous tag's span
        outside.append(text[pos:opening.start()])
        kind = opening.group(1).lower()
        tag, pos = _parse_tag(text, opening.start(), opening.end(), kind, warnings)
        if tag is not None:
            tags.append(tag)
    outside.append(text[pos:])
    return tags, "".join(outside)


def _parse_tag(text: str, opened: int, start: int, kind: str,
               warnings: list[str]) -> tuple[ParsedTag | None, int]:
    """Parse one tag opened at `opened` whose name ends at `start`; (the tag or None when
    it has no coords, where its span ends)."""
    header_end = _first_of(text, start, ">", "<")
    header = text[start:header_end]
    coords_at = _COORDS_RE.search(header)
    if coords_at is None:
        warnings.append(f"<{kind}> tag without coords=\"...\" skipped")
        return None, header_end
    quote = header.find('"', coords_at.end())
    coords = header[coords_at.end():] if quote < 0 else header[coords_at.end():quote]
    truncated = header_end == len(text)  # the text ends inside the tag's header
    if quote < 0 and not truncated:
        warnings.append(f"<{kind}> coords not terminated by '\"'; read up to the tag's end")

    if truncated:
        label, span_end = "", len(text)
    elif header.rstrip().endswith("/") and quote >= 0:
        label, span_end = "", header_end + 1  # self-closing <points coords="..."/>
    elif text[header_end] == ">":
        label_end = _first_of(text, header_end + 1, "<")  # labels hold no '<'
        label, span_end = text[header_end + 1:label_end], label_end
        closing = _CLOSE_RE[kind].match(text, label_end)
        if closing is not None:
            span_end = closing.end()
        elif label_end == len(text):
            truncated = True
        else:
            warnings.append(f"<{kind}> tag not closed by </{kind}>")
    else:  # header interrupted by another '<'
        label, span_end = "", header_end
        warnings.append(f"<{kind}> tag not closed by '>'")

    if truncated:
        warnings.append(
            f"answer ends inside a <{kind}> tag (token budget reached?): kept the complete points")
    cut_at_end = quote < 0 and header_end == len(text)
    points = _parse_coords(coords, label.strip(), kind, cut_at_end, warnings)
    if not points and not truncated:
        warnings.append(f"<{kind}> {label.strip()!r} holds no points")
    tag = ParsedTag(kind=kind, start=opened, points=points, label=label.strip(),
                    coords_done=quote >= 0 or header_end < len(text), label_done=not truncated)
    return tag, span_end


def _first_of(text: str, start: int, *chars: str) -> int:
    found = [i for i in (text.find(c, start) for c in chars) if i >= 0]
    return min(found, default=len(text))


def _parse_coords(coords: str, label: str, kind: str, cut_at_end: bool,
                  warnings: list[str]) -> list[ModelPoint]:
    segments = [s.split() for s in _FRAME_SEP_RE.split(coords)]
    segments = [s for s in segments if s]
    if cut_at_end and segments and coords and not (coords[-1].isspace() or _FRAME_SEP_RE.match(coords[-1])):
        segments[-1] = segments[-1][:-1]  # the last number may have been cut short
    points: list[ModelPoint] = []
    clipped = 0
    seen_ids: set[int] = set()
    duplicated: set[int] = set()
    last_t = -1.0
    for tokens in segments:
        if not tokens:
            continue
        if not _NUMBER_RE.fullmatch(tokens[0]) or tokens[0].startswith("-"):
            warnings.append(f"<{kind}> frame {' '.join(tokens)[:40]!r}: bad time {tokens[0][:20]!r}; frame skipped")
            continue
        t = float(tokens[0])
        if kind == "tracks" and t < last_t:
            warnings.append(f"<{kind}> frame at T={tokens[0]} follows T={last_t:g}: out of time order; frame skipped")
            continue
        last_t = t
        values = tokens[1:]
        if len(values) % 3 and not (cut_at_end and tokens is segments[-1]):
            warnings.append(f"<{kind}> at T={tokens[0]}: {len(values) % 3} stray value(s) ignored")
        ids_here: set[int] = set()
        for i in range(0, len(values) - len(values) % 3, 3):
            index, x, y = values[i:i + 3]
            if not (_INDEX_RE.fullmatch(index) and _NUMBER_RE.fullmatch(x) and _NUMBER_RE.fullmatch(y)):
                warnings.append(f"<{kind}> at T={tokens[0]}: malformed point {index} {x} {y} skipped")
                continue
            object_id, xf, yf = int(index), float(x), float(y)
            if not (0 <= xf <= COORD_MAX and 0 <= yf <= COORD_MAX):
                clipped += 1
                xf, yf = min(max(xf, 0.0), float(COORD_MAX)), min(max(yf, 0.0), float(COORD_MAX))
            if object_id in (ids_here if kind == "tracks" else seen_ids):
                duplicated.add(object_id)
            ids_here.add(object_id)
            seen_ids.add(object_id)
            points.append(ModelPoint(t, object_id, xf, yf, label))
    if clipped:
        warnings.append(f"<{kind}> {label!r}: {clipped} coordinate pair(s) outside 0..{COORD_MAX} clipped")
    if duplicated:
        where = "in one frame" if kind == "tracks" else "in one <points> tag"
        warnings.append(f"<{kind}> {label!r}: object index(es) {sorted(duplicated)} repeated {where}; kept")
    return points


def track_ids(tag_ids: set[int], earlier_ids: set[int]) -> dict[int, int]:
    """New ids for the ids of a <tracks> tag that earlier <tracks> tags already use: each
    takes the next id above every id in use (a renumbered id depends on the whole tag)."""
    taken = tag_ids | earlier_ids
    renumber = {}
    for object_id in sorted(tag_ids & earlier_ids):
        renumber[object_id] = max(taken) + 1
        taken.add(renumber[object_id])
    return renumber


def _add_tracks(points: list[ModelPoint], result: ParsedAnswer) -> None:
    renumber = track_ids({p.object_id for p in points}, set(result.tracks))
    if renumber:
        result.warnings.append(
            f"<tracks> {points[0].label!r} reuses ids of an earlier <tracks> tag; renumbered {renumber}")
    for p in points:
        object_id = renumber.get(p.object_id, p.object_id)
        result.tracks.setdefault(object_id, []).append(
            p if object_id == p.object_id else ModelPoint(p.t, object_id, p.x, p.y, p.label))


def _stated_count(outside: str, has_tags: bool, warnings: list[str]) -> int | None:
    totals = [int(n) for n in _TOTAL_RE.findall(outside)] or \
             [int(n) for n in _THERE_ARE_N_RE.findall(outside)]
    if totals:
        if len(totals) > 1:
            warnings.append(f"several totals stated {totals}; count is their sum")
        return sum(totals)
    if _NONE_RE.search(outside):
        return 0
    bare = None if has_tags else _BARE_INT_RE.fullmatch(outside)
    return int(bare.group(1)) if bare else None
