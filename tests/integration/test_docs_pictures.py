"""docs/run-flow.svg, the README's picture of a run, in the headless chromium: it renders as an image the way the
README shows it, loads nothing from elsewhere, and its text is laid out legibly (every label inside the picture and
inside the box it names, no two labels overlapping, nothing smaller than 12 px at full size)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PICTURE = ROOT / "docs" / "run-flow.svg"

# Every <text>'s box, and whether it lies inside the picture, inside the <rect>s its centre falls in, and clear of
# every other label. Boxes from getBBox are in the picture's own units (its viewBox).
LAYOUT = """() => {
  const svg = document.querySelector("svg");
  const view = svg.viewBox.baseVal;
  const rects = [...svg.querySelectorAll("rect")].map((r) => r.getBBox()).filter((b) => b.width < view.width);
  const texts = [...svg.querySelectorAll("text")].map((t) => ({
    text: t.textContent, box: t.getBBox(), size: parseFloat(getComputedStyle(t).fontSize),
  }));
  const inside = (a, b) => a.x >= b.x - 0.5 && a.y >= b.y - 0.5
    && a.x + a.width <= b.x + b.width + 0.5 && a.y + a.height <= b.y + b.height + 0.5;
  const overlap = (a, b) =>
    a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
  const problems = [];
  texts.forEach((t, i) => {
    if (!inside(t.box, view)) problems.push(`outside the picture: ${t.text}`);
    if (t.size < 12) problems.push(`smaller than 12px: ${t.text}`);
    const cx = t.box.x + t.box.width / 2, cy = t.box.y + t.box.height / 2;
    for (const r of rects) {
      const holds = cx > r.x && cx < r.x + r.width && cy > r.y && cy < r.y + r.height;
      if (holds && !inside(t.box, r)) problems.push(`out of its box: ${t.text}`);
    }
    texts.slice(i + 1).forEach((u) => {
      if (overlap(t.box, u.box)) problems.push(`overlapping: ${t.text} / ${u.text}`);
    });
  });
  return { problems, texts: texts.length, rects: rects.length };
}"""


def test_the_readme_and_the_architecture_page_show_it() -> None:
    for doc, target in [(ROOT / "README.md", "docs/run-flow.svg"), (ROOT / "docs" / "architecture.md", "run-flow.svg")]:
        assert re.search(rf"!\[[^\]]+\]\({re.escape(target)}\)", doc.read_text(encoding="utf-8")), doc.name


def test_it_loads_nothing_from_elsewhere() -> None:
    svg = PICTURE.read_text(encoding="utf-8")
    assert re.findall(r"https?://[^\s\"']+", svg) == ["http://www.w3.org/2000/svg"]  # the namespace only
    assert (
        "<image" not in svg and "<script" not in svg and "@import" not in svg and "url(" not in svg.replace("url(#", "")
    )


def test_it_renders_as_the_readme_shows_it_and_its_text_is_legible(browser: Any, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    try:
        # As an image in a page, the way GitHub and any markdown viewer show it.
        html = tmp_path / "readme.html"
        html.write_text(f'<!doctype html><img id="flow" src="{PICTURE.as_uri()}" style="width: 880px">')
        page.goto(html.as_uri())
        page.wait_for_function("document.getElementById('flow').complete")
        size = page.evaluate("[document.getElementById('flow').naturalWidth, document.getElementById('flow').height]")
        assert size[0] == 1120 and size[1] > 600, size  # decoded, and drawn at the README's width
        # On its own, to measure its text.
        page.goto(PICTURE.as_uri())
        layout = page.evaluate(LAYOUT)
        assert layout["texts"] >= 40 and layout["rects"] >= 15, layout
        assert layout["problems"] == [], layout["problems"]
        words = page.evaluate("document.querySelector('svg').textContent")
        for part in [
            "step queue",
            "step executor",
            "BabySea",
            "BFL",
            "BytePlus",
            "local",
            "artifact store",
            "callback sender",
            "your webhook_url",
            "sweeper",
            "cancel",
            "Postgres",
            "Standard Webhooks",
        ]:
            assert part in words, part
    finally:
        page.close()
    assert {url.split("/")[0] for url in asked} == {"file:"}, asked
