"""Turning stored text into safe HTML: guidelines (Markdown, sanitised) and model output (always escaped).

Model output is untrusted: it is escaped, never interpreted as HTML or Markdown. Only two things of its shape
are kept: line breaks (the block is rendered with ``white-space: pre-wrap``) and fenced code blocks (```),
which become ``<pre><code>`` blocks, still escaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import markdown
import nh3
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

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
