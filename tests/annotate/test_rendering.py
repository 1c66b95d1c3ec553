"""Model text is escaped with its line breaks and code blocks kept; guidelines Markdown is sanitised."""

from annotate.rendering import is_long, render_markdown, render_model_text, split_code_blocks


def test_code_blocks_are_split_out():
    blocks = split_code_blocks("Intro\n```js\nlet a = 1;\n```\nOutro\n~~~\nraw\n")
    assert [(b.kind, b.text, b.language) for b in blocks] == [
        ("text", "Intro", ""), ("code", "let a = 1;", "js"), ("text", "Outro", ""), ("code", "raw", ""),
    ]


def test_everything_is_escaped():
    html = render_model_text('<img src=x onerror="alert(1)">\n```html\n<script>x()</script>\n```')
    assert "<img" not in html and "<script>" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert '<pre class="code"><code data-lang="html">&lt;script&gt;x()&lt;/script&gt;</code></pre>' in html


def test_language_tag_cannot_break_out():
    html = render_model_text('```"><script>\ncode\n```')
    assert "<script>" not in html


def test_plain_text_keeps_line_breaks_and_whitespace_only_text_survives():
    assert render_model_text("a\n\nb") == '<div class="plain">a\n\nb</div>'
    assert render_model_text("") == '<div class="plain"></div>'


def test_long_responses_collapse():
    assert not is_long("short")
    assert is_long("x" * 701) and is_long("\n".join(["line"] * 15))


def test_markdown_is_sanitised():
    html = render_markdown("# Title\n\n<script>alert(1)</script>\n\n[x](javascript:alert(1)) [ok](https://a.b)")
    assert "<h1>Title</h1>" in html and "<script>" not in html and "javascript:" not in html
    assert 'href="https://a.b"' in html and 'rel="noopener noreferrer nofollow"' in html


# --- model output as Markdown (issue 16, item 11) -------------------------------------------------------------------

from annotate.rendering import has_markup, plain_excerpt, render_model_markdown  # noqa: E402


def test_model_markdown_renders_tables_lists_headings_and_highlighted_code():
    html = render_model_markdown(
        "## Plan\n\n1. **first**\n2. second\n\n| a | b |\n|:--|--:|\n| 1 | 2 |\n\n```python\ndef f():\n    return 1\n```"
    )
    assert "<h2>Plan</h2>" in html and "<ol>" in html and "<strong>first</strong>" in html
    assert '<th align="left">a</th>' in html and '<td align="right">2</td>' in html
    assert '<div class="hl"><pre>' in html and '<span class="k">def</span>' in html
    assert "style=" not in html  # the CSP forbids inline styles: alignment is an attribute, colours are classes


def test_model_markdown_shows_raw_html_as_text_and_keeps_nothing_dangerous():
    html = render_model_markdown('<script>alert(1)</script>\n\n<img src=x onerror="alert(2)"> '
                                 "[x](javascript:alert(3)) ![pic](https://example.org/p.png) <b>bold?</b>")
    assert "<script" not in html and "<img" not in html and "&lt;img src=x onerror=" in html  # text, not a tag
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;bold?&lt;/b&gt;" in html
    assert "javascript:" not in html and 'href="https://example.org/p.png"' not in html.split("![pic]")[0]


def test_model_markdown_keeps_line_breaks_and_classes_only_from_pygments():
    assert render_model_markdown("Line one\nLine two") == "<p>Line one<br>\nLine two</p>"
    assert '<span class="evil"' not in render_model_markdown('<span class="evil">x</span>')
    assert 'class="language-evil"' not in render_model_markdown("```evil\nx\n```")


def test_has_markup_and_excerpt():
    assert not has_markup("Lovely place, great coffee.") and not has_markup("Price: 5 - 3\nnext line")
    assert all(has_markup(t) for t in ["a *b*", "- item", "1. one", "x | y", "`code`", "# h", "a <b>"])
    assert plain_excerpt("a  b\n c") == "a b c"
    assert plain_excerpt("word " * 100, chars=20) == "word word word word …"


def test_a_reused_converter_carries_nothing_from_one_text_to_the_next():
    from annotate import rendering

    defines = "A [link][ref] here.\n\n[ref]: https://example.com/one"
    assert 'href="https://example.com/one"' in render_model_markdown(defines)
    # the same thread's converter, next text: the reference defined above must not resolve here
    uses = "Only [a reference][ref] without its definition."
    assert "example.com" not in render_model_markdown(uses)
    # a text past the cache limit renders the same way as a cached one
    long_text = "**bold** " + "word " * (rendering.RENDER_CACHE_MAX_CHARS // 5)
    assert len(long_text) > rendering.RENDER_CACHE_MAX_CHARS
    assert render_model_markdown(long_text).startswith("<p><strong>bold</strong> word")
    assert render_model_markdown("**bold**") is render_model_markdown("**bold**")  # cached
