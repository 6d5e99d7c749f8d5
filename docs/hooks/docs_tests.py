"""MkDocs hook: a code block the documentation tests do not run says so on the page.

``<!-- docs-test: parse-only REASON -->`` before a fence tells ``tests/test_docs.py`` to check the
block's commands without running them; this hook shows the same line to the reader, so the marker
is the one source for both."""

import re

MARKER = re.compile(r"^(?P<indent>[ \t]*)<!-- docs-test: parse-only (?P<reason>.+?) -->[ \t]*$", re.MULTILINE)


def on_page_markdown(markdown: str, **kwargs) -> str:
    def note(match: re.Match) -> str:
        indent, reason = match["indent"], match["reason"].strip()
        return f"{indent}<small>Not run by the documentation tests: {reason}; its options are checked.</small>\n"

    return MARKER.sub(note, markdown)
