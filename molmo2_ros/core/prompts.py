"""Task prompts in the phrasings Molmo2 was trained on, and query neutralisation.

Public API:
    build_prompt(task, query, *, video, fps=None) -> str   the user turn for one query
    sanitize_query(text) -> str      user text made safe for the chat template
    extract_label(query) -> str      "the red block." -> "red block"
    InvalidQuery                     ValueError raised for empty/too long/non-text queries
    MAX_QUERY_CHARS

Why these prompts. Training drew one template at random from a list per task
(allenai/molmo2 `olmo/preprocessing/data_formatter.py`, GENERAL_PROMPTS_V1); its own
inference helper (`build_prompt_for_inference`) deterministically takes the *first*
template of each list, so those are the forms we use:

    point (style "pointing"/"video_point", answer: the <points> tag or "There are none."):
        "Point to {label}\\nPlease say 'There are none.' if it is not in the image."
        ("image" -> "video" for video input, exactly as training derived the video list)
    count (style "point_count"/"video_point_count", answer: "Counting the <points ...>
        shows a total of N."):
        "How many {label} are there?"
    track ("video_point_track_per_frame"): "Track {label} in {fps} FPS."; when the fps is
        the default 2 (or not a whole number) training dropped it half the time and used
        "Track {label}." -- we use that short form then, since {fps} is rendered as an int.
    ask: the (neutralised) query itself.

Demo styles such as these got no "style:" prefix in the released models' system
prompt, so none is added.
"""
from __future__ import annotations

import re
import unicodedata

from molmo2_ros.core.grounding import Task

MAX_QUERY_CHARS = 500

POINT_TEMPLATE = "Point to {label}\nPlease say 'There are none.' if it is not in the {medium}."
COUNT_TEMPLATE = "How many {label} are there?"
TRACK_TEMPLATE = "Track {label}."
TRACK_FPS_TEMPLATE = "Track {label} in {fps} FPS."
DEFAULT_TRACK_FPS = 2


class InvalidQuery(ValueError):
    """The query cannot be used (empty, too long, not text)."""


# Chat-template markers and special tokens: the "<|...|>" family (<|im_start|>,
# <|im_end|>, <|endoftext|>, <|image|>, <|video|>, ...) and every bare-word tag
# "<name>", "</name>", "<name/>": Molmo2's image/frame tokens (<im_patch>, <im_col>,
# <im_start>, <im_end>, <im_low>, <low_res_im_start>, <frame_start>, <frame_end>),
# Qwen3's <think>/<tool_call>, and any other added token spelled that way. Removed until
# none is left (removing one can join two halves of another).
_MARKER_RE = re.compile(r"<\|[^<>]*?\|>|<\s*/?\s*[A-Za-z_][A-Za-z0-9_]*\s*/?\s*>")
_LEADING_DETERMINER_RE = re.compile(
    r"^(?:(?:all|each|every|any)\s+(?:of\s+)?)?(?:(?:the|an|a)\s+)?", re.IGNORECASE)


def sanitize_query(text: str) -> str:
    """Return `text` safe to put inside the user turn of the chat template.

    NFKC-normalises (so look-alike characters cannot spell a marker), removes template
    markers and special tokens, turns control/format characters and newlines into
    single spaces, and enforces MAX_QUERY_CHARS. Raises InvalidQuery when nothing
    usable is left or the text is too long.
    """
    if not isinstance(text, str):
        raise InvalidQuery(f"query must be a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text)
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c
                   for c in text)
    while True:
        cleaned = _MARKER_RE.sub("", text)
        if cleaned == text:
            break
        text = cleaned
    text = " ".join(text.split())
    if not text:
        raise InvalidQuery("query is empty (after removing template markers and control characters)")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidQuery(
            f"query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
    return text


def extract_label(query: str) -> str:
    """The object label inside a pointing/counting/tracking query.

    Trained prompts put a bare noun phrase in {label} ("Point to boats", "How many
    cups are there?"), so a leading quantifier/article ("all the", "the", "a") and
    trailing punctuation are dropped: "the red block." -> "red block".
    """
    label = sanitize_query(query).strip(" .?!;:,")
    label = _LEADING_DETERMINER_RE.sub("", label, count=1).strip()
    if not label:
        raise InvalidQuery(f"query {query!r} names no object")
    return label


def build_prompt(task: Task | str, query: str, *, video: bool, fps: float | None = None) -> str:
    """The user text for `task` about `query`.

    `video`: several frames (video input) rather than one image. `fps`: the rate the
    frames were sampled at, used by the track prompt.
    """
    task = Task(task)
    if task is Task.ASK:
        return sanitize_query(query)
    label = extract_label(query)
    if task is Task.POINT:
        return POINT_TEMPLATE.format(label=label, medium="video" if video else "image")
    if task is Task.COUNT:
        return COUNT_TEMPLATE.format(label=label)
    whole_fps = round(fps) if fps is not None and fps >= 1 and abs(fps - round(fps)) < 0.05 else None
    if whole_fps is None or whole_fps == DEFAULT_TRACK_FPS:
        return TRACK_TEMPLATE.format(label=label)
    return TRACK_FPS_TEMPLATE.format(label=label, fps=whole_fps)
