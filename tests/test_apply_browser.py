"""The ``/apply`` form in Debian's Chromium, with JavaScript off: errors next to their
field, the signing step (``cityid apply sign``), the status page before and after
the parent approves. The registrar is a real child process on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_harness import expect, launch, new_context, why_no_browser
from registrar_harness import (
    ROOT,
    RegistrarProcess,
    RegistrarSpec,
    cli,
    key_path,
    make_registrar,
    new_key,
)

from cityid.keys import SigningKey

WHY_NO_BROWSER = why_no_browser()
pytestmark = [
    pytest.mark.skipif(bool(WHY_NO_BROWSER), reason=WHY_NO_BROWSER),
    pytest.mark.timeout(180),
]
TIMEOUT_MS = 20_000


@pytest.fixture
def registrar(tmp_path: Path) -> Iterator[tuple[RegistrarSpec, SigningKey, Path]]:
    keys = tmp_path / "keys"
    root_key = new_key("root-admin", keys)
    spec = make_registrar(tmp_path / "root", ROOT, "root.cityid.test/log", admin=root_key)
    with RegistrarProcess(spec) as proc:
        proc.start()
        yield spec, root_key, keys
        proc.stop()


@pytest.fixture
def page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as pw:
        browser = launch(pw)
        context = new_context(browser, java_script_enabled=False)
        context.set_default_timeout(TIMEOUT_MS)
        yield context.new_page()
        context.close()
        browser.close()


def test_apply_form_without_javascript(
    page: Any, registrar: tuple[RegistrarSpec, SigningKey, Path]
) -> None:
    spec, root_key, keys = registrar
    bd = new_key("MA.156.1306-admin", keys)
    page.goto(f"{spec.url}/apply")
    expect(page.locator("h1")).to_have_text("Apply for a prefix")
    page.fill("#f-adcode", "130632")  # 安新县: a county, refused at the root
    page.fill("#f-name", "安新县")
    page.fill("#f-contact_name", "Li Wei")
    page.fill("#f-contact_email", "it@baoding")
    page.fill("#f-contact_phone", "+86 312 555 0100")
    page.fill("#f-admin_key", str(bd.verifier))
    page.click("button[type=submit]")
    # The first fault is shown under its own field, the values kept.
    expect(page.locator("#e-contact_email")).to_contain_text("is not an address")
    expect(page.locator("#f-contact_email")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-name")).to_have_value("安新县")
    page.fill("#f-contact_email", "it@baoding.example")
    page.click("button[type=submit]")
    expect(page.locator("#e-adcode")).to_contain_text("130600 保定市")
    page.fill("#f-adcode", "130600")
    page.fill("#f-name", "保定市")
    page.click("button[type=submit]")

    # Step two: the canonical application, signed by the applicant's own CLI.
    expect(page.locator("h1")).to_have_text("Sign your application")
    canonical = page.locator("#canonical").inner_text()
    page.fill("#f-signature", "A" * 86 + "==")  # 64 bytes, not a signature
    page.click("button[type=submit]")
    expect(page.locator("#e-signature")).to_contain_text("does not verify")
    signed = cli("apply", "sign", "--key", str(key_path(keys, bd)), canonical)
    assert signed.returncode == 0, signed.stderr
    assert "MA.156.1306 (保定市)" in signed.stderr
    page.fill("#f-signature", signed.stdout.strip())
    page.click("button[type=submit]")

    expect(page.locator("#status")).to_have_text("pending")
    ticket = page.locator("#ticket").inner_text()
    assert page.url.endswith(f"/apply/{ticket}")
    assert "baoding.example" not in page.content()  # the contact is never shown

    approved = cli(
        "applications", "approve", ticket, "--key", str(key_path(keys, root_key)),
        "--registrar", spec.url,
    )  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    page.reload()
    expect(page.locator("#status")).to_have_text("approved")
    expect(page.locator("#leaf")).to_have_text("0")  # the first leaf of this log
    page.screenshot(path=str(spec.directory / "apply-status.png"))
