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
