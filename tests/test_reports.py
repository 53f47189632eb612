"""One page model, two renderings: the Markdown and the HTML of a report come from the same blocks."""

from html.parser import HTMLParser

from trtquant.reports.page import Bullets, Figure, Heading, Page, Para, Table, to_html, to_markdown


def _page():
    return Page("t", "Title <x>").add(
        Para(("a **bold** `code` & <tag>", "second line")),
        Table(("h1", "h2"), (("1", "**2**"), ("failed: a/b",))),
        Figure("A plot", '<svg xmlns="http://www.w3.org/2000/svg"><circle r="1"/></svg>'),
        Heading("Section"),
        Bullets((("item `x`", ("`cmd --flag`",)), ("plain", ()))),
        Bullets(()))                                  # empty: nothing in Markdown


def test_markdown_rendering_is_exact():
    assert to_markdown(_page()) == (
        "# Title <x>\n\n"
        "a **bold** `code` & <tag>\nsecond line\n\n"
        "| h1 | h2 |\n|---|---|\n| 1 | **2** |\n| failed: a/b |\n\n"
        "## Section\n\n"
        "- item `x`\n  - `cmd --flag`\n- plain\n")


def test_html_escapes_text_keeps_marks_and_embeds_the_figure():
    page = to_html(_page())
    assert page.startswith("<!DOCTYPE html>") and "<title>t</title>" in page
    assert "<h1>Title &lt;x&gt;</h1>" in page
    assert "<p>a <b>bold</b> <code>code</code> &amp; &lt;tag&gt;</p>" in page
    assert "<td><b>2</b></td>" in page and '<div class="cmd"><code>cmd --flag</code></div>' in page
    assert page.index("<h2>A plot</h2>") < page.index("<svg") < page.index("<h2>Section</h2>")

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags = []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

    t = Tags()
    t.feed(page)
    assert t.tags.count("table") == 1 and t.tags.count("tr") == 3 and t.tags.count("circle") == 1
