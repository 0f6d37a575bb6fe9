"""The report in a real browser: headless Chromium renders it to a non-blank screenshot, its one script (the
run-table sorting, allowed by hash in the page's Content-Security-Policy) runs, and the report split by a field
opens without a message on the console (a script error, or anything the policy blocked)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; installed with apt when missing and we are root, else the test is skipped."""
    path = find_chromium()
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get): "
                    "apt-get install chromium")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env=env, check=True,
                       capture_output=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        output = getattr(err, "stderr", b"") or b""
        pytest.skip(f"chromium could not be installed with apt-get: {output.decode(errors='replace')[-300:]}")
    path = find_chromium()
    if not path:
        pytest.skip("apt-get installed chromium but no chromium executable was found")
    return path


def headless(chromium, tmp_path, *args) -> subprocess.CompletedProcess:
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(command, capture_output=True, timeout=120, cwd=tmp_path)


def test_report_renders_to_a_non_blank_screenshot(chromium, report_path, tmp_path):
    from PIL import Image, ImageStat

    shot = tmp_path / "report.png"
    result = headless(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,4000",
                      report_path.resolve().as_uri())
    assert shot.is_file(), result.stderr.decode(errors="replace")[-2000:]
    assert shot.stat().st_size > 50_000
    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        rgb = im.convert("RGB")
        # not blank: many colours (text, badges, plots), real contrast, and ink all down the page
        assert len(rgb.getcolors(maxcolors=1 << 20) or []) > 200
        assert max(ImageStat.Stat(rgb).stddev) > 20
        for top in range(0, 3000, 1000):
            band = rgb.crop((0, top, 1280, top + 1000)).convert("L")
            assert band.getextrema()[0] < 80, f"nothing dark drawn in rows {top}-{top + 1000}"


def test_report_script_runs_under_its_content_security_policy(chromium, report_path, tmp_path):
    result = headless(chromium, tmp_path, "--dump-dom", report_path.resolve().as_uri())
    dom = result.stdout.decode(errors="replace")
    assert 'id="runs-table"' in dom, result.stderr.decode(errors="replace")[-2000:]
    assert 'title="click to sort"' in dom  # set by the report's script: it was allowed to run


def console(result: subprocess.CompletedProcess) -> list[str]:
    """What the page wrote to the console (errors, and what its Content-Security-Policy blocked), as Chromium logs it
    with --enable-logging=stderr."""
    return [line for line in result.stderr.decode(errors="replace").splitlines() if ":CONSOLE" in line]


def test_the_report_by_a_field_opens_without_console_messages(chromium, by_report_path, tmp_path):
    result = headless(chromium, tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom",
                      by_report_path.resolve().as_uri())
    dom = result.stdout.decode(errors="replace")
    assert 'id="by-1"' in dom and 'title="click to sort"' in dom, result.stderr.decode(errors="replace")[-2000:]
    assert console(result) == []
    # the check sees what it looks for: an image the policy blocks, and a script error
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" content=\"img-src "
                   "'none'\"></head><body><img src=\"data:image/gif;base64,R0lGODlhAQABAAAAACw=\">"
                   "<script>undefined_name()</script></body></html>")
    seen = console(headless(chromium, tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom",
                            bad.resolve().as_uri()))
    assert len(seen) == 2 and any("undefined_name" in line for line in seen), seen
