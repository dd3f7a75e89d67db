"""The labeling page in a real browser (Debian's chromium, driven by Playwright): a pushed task opens with the model's
spans and boxes drawn, ready to correct. The screenshot goes to reports/labeling.png."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from elasticsearch import AsyncElasticsearch
from playwright.async_api import async_playwright

from postlens.settings import Settings
from tests.support.image_server import ImageServer
from tests.trainer.label.conftest import base_url, index_posts, project_tasks, seeded
from trainer.label.__main__ import run_push

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
SCREENSHOT = Path(__file__).resolve().parents[3] / "reports" / "labeling.png"


async def test_a_pushed_task_opens_with_its_spans_and_boxes_drawn(
    loop_settings: Settings, es: AsyncElasticsearch, images: ImageServer
) -> None:
    if not CHROMIUM.is_file():
        pytest.fail(f"no {CHROMIUM}: apt-get install chromium (make setup does)", pytrace=False)
    text = "Lionel Messi 🐐 lands in Miami with Inter"  # spans after a character outside the BMP must not shift
    post = seeded("page-1", text, [("Lionel Messi", "PER", 0.55), ("Miami", "LOC", 0.62), ("Inter", "ORG", 0.4)],
                  [images.url("img/messi.png")])  # fmt: skip
    await index_posts(es, loop_settings, [post])
    pushed = await run_push(loop_settings, 1)
    [task] = await project_tasks(loop_settings)
    url = base_url(loop_settings)
    password = json.loads(loop_settings.label_studio_credentials.read_text())["password"]

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.goto(f"{url}/user/login/")
            await page.fill("input[name=email]", loop_settings.label_studio_username)
            await page.fill("input[name=password]", password)
            await page.click("button[type=submit]")
            await page.wait_for_url(lambda u: "/login" not in u)
            await page.goto(f"{url}/projects/{task['project']}/data?task={task['id']}")
            # Drawn: each span a highlight in the text, each box a rectangle on the image canvas (Konva).
            drawn = await page.wait_for_function(
                """([spans, boxes]) => {
                    const marks = document.querySelectorAll('.htx-highlight').length;
                    const loaded = Array.from(document.querySelectorAll('img')).some(i => i.naturalWidth > 0);
                    const rects = window.Konva ? window.Konva.stages.reduce((n, s) => n + s.find('Rect').length, 0) : 0;
                    return marks >= spans && rects >= boxes && loaded && {marks, rects};
                }""",
                arg=[pushed["spans"], pushed["boxes"]],
                timeout=120_000,
            )
            counts = await drawn.json_value()
            marked = await page.locator(".htx-highlight").all_inner_texts()
            listed = {
                kind: await page.locator(f".lsf-tree__node_type_{kind}").count()
                for kind in ("richtextregion", "rectangleregion")
            }
            SCREENSHOT.parent.mkdir(exist_ok=True)
            await page.screenshot(path=str(SCREENSHOT))
        finally:
            await browser.close()
    assert pushed["spans"] == 3 and pushed["boxes"] == 3
    assert counts == {"marks": pushed["spans"], "rects": pushed["boxes"]}
    assert sorted(m.strip() for m in marked) == sorted(e.text for e in post.entities)
    assert listed == {"richtextregion": pushed["spans"], "rectangleregion": pushed["boxes"]}
