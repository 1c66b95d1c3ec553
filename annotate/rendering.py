"""Turning stored text into safe HTML: guidelines (Markdown, sanitised) and model output.

Model output is untrusted. By default (`Project.render_markdown`) it is rendered as Markdown the way chat models
write it — headings, lists, tables, fenced code highlighted by Pygments — with any raw HTML in it shown as text
(Python-Markdown's documented way: the raw-HTML block and inline processors are removed) and the result
sanitised by nh3 with a small allow-list (no images, no styles, only Pygments' token classes). The plain
rendering (`render_model_text`) escapes everything and keeps only line breaks and fenced code blocks; the
ranking page also shows it on request ("Show raw").
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass

import markdown
import nh3
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from pygments.token import STANDARD_TYPES

from webapp.boundary import scrub_text

_FENCE = re.compile(r"^\s{0,3}(```+|~~~+)\s*([\w+#.-]*)[^\n]*$")
# A response longer than this is collapsed on the ranking page until the annotator expands it.
COLLAPSE_CHARS = 700
COLLAPSE_LINES = 14


@dataclass(frozen=True)
class TextBlock:
    kind: str  # "text" | "code"
    text: str
    language: str = ""


def split_code_blocks(text: str) -> list[TextBlock]:
    """Split model output into plain-text and fenced-code blocks.

    A fence is a line starting with three or more backticks (or tildes); the block ends at a line with a fence
    of the same character at least as long, or at the end of the text (a model often stops mid-block).
    """
    blocks: list[TextBlock] = []
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    buffer: list[str] = []
    fence: str | None = None
    language = ""
    for line in lines:
        match = _FENCE.match(line)
        if fence is None:
            if match:
                if buffer:
                    blocks.append(TextBlock("text", "\n".join(buffer)))
                buffer = []
                fence, language = match.group(1), match.group(2)
                continue
            buffer.append(line)
        else:
            stripped = line.strip()
            if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
                blocks.append(TextBlock("code", "\n".join(buffer), language))
                buffer, fence, language = [], None, ""
                continue
            buffer.append(line)
    if fence is not None:  # unclosed: the model stopped inside the block
        blocks.append(TextBlock("code", "\n".join(buffer).rstrip("\n"), language))
    elif buffer:
        blocks.append(TextBlock("text", "\n".join(buffer)))
    kept = [b for b in blocks if b.kind == "code" or b.text.strip()]
    return kept or [TextBlock("text", text)]


def render_model_text(text: str) -> SafeString:
    """Escaped HTML for a prompt or response: text blocks keep their line breaks, code blocks become <pre>."""
    parts = []
    for block in split_code_blocks(text or ""):
        if block.kind == "code":
            lang = format_html(' data-lang="{}"', block.language) if block.language else ""
            parts.append(format_html('<pre class="code"><code{}>{}</code></pre>', lang, block.text))
        else:
            parts.append(format_html('<div class="plain">{}</div>', block.text.strip("\n")))
    return mark_safe("".join(parts))  # noqa: S308 - every part was built with format_html (escaped)


def is_long(text: str) -> bool:
    """Whether the ranking page collapses this response until it is expanded."""
    return len(text) > COLLAPSE_CHARS or text.count("\n") >= COLLAPSE_LINES


_ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "dl", "dt", "em", "h1", "h2", "h3",
    "h4", "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "pre", "s", "strong", "sub", "summary", "sup",
    "table", "tbody", "td", "th", "thead", "tr", "ul",
}
_ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "abbr": {"title"},
                       "td": {"align"}, "th": {"align"}}


def render_markdown(text: str) -> SafeString:
    """Guidelines Markdown → HTML, sanitised with nh3 (no scripts, no event handlers, safe URL schemes)."""
    # nh3 (Rust) cannot take a lone surrogate: stored text that holds one renders with U+FFFD instead.
    html = markdown.markdown(scrub_text(text or ""), extensions=["extra", "sane_lists"], output_format="html")
    clean = nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(clean)  # noqa: S308 - sanitised by nh3 just above


# --- model output as Markdown -------------------------------------------------------------------------------------

_MODEL_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "div", "dl", "dt", "em", "h1", "h2", "h3", "h4",
    "h5", "h6", "hr", "i", "kbd", "li", "ol", "p", "pre", "s", "span", "strong", "sub", "sup", "table", "tbody",
    "td", "th", "thead", "tr", "ul",
}
_MODEL_ATTRIBUTES = {"a": {"href", "title"}, "abbr": {"title"}, "td": {"align"}, "th": {"align"}}
# Pygments' short token classes (k, nb, s1, …) and the block class: nothing else may set a class.
_HIGHLIGHT_CLASS = "hl"
_MODEL_CLASSES = {"div": {_HIGHLIGHT_CLASS}, "span": {c for c in STANDARD_TYPES.values() if c}}


def _model_markdown() -> markdown.Markdown:
    md = markdown.Markdown(
        # nl2br: a line break the model wrote stays one (a poem, an address), as in the raw text.
        extensions=["tables", "fenced_code", "def_list", "sane_lists", "nl2br", "codehilite"],
        extension_configs={
            "tables": {"use_align_attribute": True},  # align="…", not an inline style (the CSP forbids those)
            "codehilite": {"guess_lang": False, "css_class": _HIGHLIGHT_CLASS},
        },
        output_format="html",
    )
    # Raw HTML in model output is text to read, not markup: escaped instead of passed through.
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    # No images (they would load from anywhere): ![alt](url) reads as "!" and a link to the url.
    for name in ("image_link", "image_reference", "short_image_ref"):
        if name in md.inlinePatterns:
            md.inlinePatterns.deregister(name)
    return md


_thread_state = threading.local()


def _reusable_model_markdown() -> markdown.Markdown:
    """This thread's converter: building one (extensions, Pygments) cost more than converting a response;
    `reset()` clears what one conversion leaves behind, as Python-Markdown documents for reuse. One per thread:
    a converter holds per-document state and gunicorn serves with threads."""
    md = getattr(_thread_state, "model_markdown", None)
    if md is None:
        md = _thread_state.model_markdown = _model_markdown()
    return md.reset()


RENDER_CACHE_ENTRIES = 4096
RENDER_CACHE_MAX_CHARS = 16_384  # longer texts are rendered each time: the cache stays under ~64 MB a process


def render_model_markdown(text: str) -> SafeString:
    """Model output (a prompt or a response) as sanitised Markdown: code highlighted, raw HTML escaped.

    Cached by text: the same prompt and responses are shown to every annotator of a prompt (and again on each
    reload), and the rendering depends on the text alone."""
    text = text or ""
    if len(text) <= RENDER_CACHE_MAX_CHARS:
        return _cached_model_markdown(text)
    return _model_markdown_html(text)


@functools.lru_cache(maxsize=RENDER_CACHE_ENTRIES)
def _cached_model_markdown(text: str) -> SafeString:
    return _model_markdown_html(text)


def _model_markdown_html(text: str) -> SafeString:
    html = _reusable_model_markdown().convert(scrub_text(text))
    clean = nh3.clean(
        html,
        tags=_MODEL_TAGS,
        attributes=_MODEL_ATTRIBUTES,
        allowed_classes=_MODEL_CLASSES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(clean)  # noqa: S308 - sanitised by nh3 just above


# Characters and line starts that Markdown gives a meaning to; text without any renders as itself.
_MARKUP = re.compile(r"[*_`#|\[\]<>&~\\]|^\s*(?:[-+]|\d+[.)])\s|^\s{4}\S|^\s*(?:=+|-+)\s*$", re.MULTILINE)


def has_markup(text: str) -> bool:
    """Whether Markdown could render this text differently from how it reads raw (then "Show raw" is offered)."""
    return bool(_MARKUP.search(text or ""))


def render_model_output(text: str, *, as_markdown: bool) -> SafeString:
    """The project's choice: Markdown (`render_model_markdown`) or plain escaped text (`render_model_text`)."""
    return render_model_markdown(text) if as_markdown else render_model_text(text)


def plain_excerpt(text: str, *, chars: int = 160) -> str:
    """One line of a response for lists (the history page): whitespace collapsed, cut at a word."""
    flat = " ".join(scrub_text(text or "").split())
    if len(flat) <= chars:
        return flat
    cut = flat[:chars].rsplit(" ", 1)[0] or flat[:chars]
    return cut + " …"
