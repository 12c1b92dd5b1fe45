"""Downloader and extraction: resume with HTTP Range, retries, checksum re-fetch, HTML pages
refused, mirrors in order, and safe extraction (no absolute paths, no ``..``, no links)."""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from cpbench.data import fetch
from cpbench.errors import UserError
sys.path.insert(0, str(Path(__file__).parent))
from test_datasets_download import pack, serve  # noqa: E402


def test_download_resumes_partial_file(tmp_path):
    data = bytes(range(256)) * 50
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(data[:1000])
    seen = []
    with serve({"f.bin": data}) as (base, log):
        fetch.download(f"{base}/f.bin", dest, progress=lambda n, d, t: seen.append((d, t)))
    assert dest.read_bytes() == data
    assert log == [("f.bin", "bytes=1000-")]
    assert seen[-1] == (len(data), len(data))
    assert not (tmp_path / "f.bin.part").exists()


def test_obtain_tries_mirrors_and_refetches_corrupt(tmp_path):
    data = b"payload" * 1000
    src = fetch.Source("f.bin", sha256=hashlib.sha256(data).hexdigest())
    with serve({"f.bin": data}, corrupt_once={"f.bin"}) as (base, log):
        src = fetch.Source("f.bin", (f"{base}/dead/f.bin", f"{base}/f.bin"), sha256=src.sha256)
        path, status = fetch.obtain(src, tmp_path, None)
    assert status == "ok" and path.read_bytes() == data
    assert [f for f, _ in log] == ["dead/f.bin", "f.bin", "f.bin"]  # 404 not retried; corrupt copy re-fetched


def test_persistent_corruption_fails_with_connection_error(tmp_path):
    with serve({"f.bin": b"abc"}) as (base, _log):
        src = fetch.Source("f.bin", (f"{base}/f.bin",), sha256="0" * 64)
        with pytest.raises(ConnectionError, match="checksum"):
            fetch.obtain(src, tmp_path, None)
    assert not (tmp_path / "f.bin").exists()


def test_html_page_is_not_saved_as_the_file(tmp_path, monkeypatch):
    import http.server

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b"<html>Google Drive can't scan this file for viruses</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    import threading

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        with pytest.raises(ConnectionError, match="HTML"):
            fetch.download(f"http://127.0.0.1:{srv.server_address[1]}/x.json", tmp_path / "x.json", retries=1,
                           backoff=0.01)
    finally:
        srv.shutdown()
        srv.server_close()
    assert not (tmp_path / "x.json").exists()


def test_gdrive_share_link_goes_to_direct_endpoint():
    url = fetch._gdrive_direct("https://drive.google.com/file/d/ABC_123/view?usp=sharing")
    assert url == "https://drive.usercontent.google.com/download?id=ABC_123&export=download&confirm=t"


@pytest.mark.parametrize("member", ["../escape.txt", "/abs/escape.txt", "a/../../escape.txt"])
@pytest.mark.parametrize("kind", ["x.tar.gz", "x.zip"])
def test_traversal_refused_before_writing(tmp_path, member, kind):
    arc = tmp_path / kind
    arc.write_bytes(pack(kind, {"ok/first.txt": b"1", member: b"x"}))
    target = tmp_path / "deep" / "target"
    with pytest.raises(UserError, match="outside"):
        fetch.extract(arc, target)
    assert not list(target.rglob("*.txt"))  # checked whole archive first: nothing written
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "deep" / "escape.txt").exists()


def test_links_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("a/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    (tmp_path / "l.tar").write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="link"):
        fetch.extract(tmp_path / "l.tar", tmp_path / "t")
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zi = zipfile.ZipInfo("a/link")
        zi.external_attr = (0o120777 << 16)
        zf.writestr(zi, "/etc/passwd")
    (tmp_path / "l.zip").write_bytes(zbuf.getvalue())
    with pytest.raises(UserError, match="link"):
        fetch.extract(tmp_path / "l.zip", tmp_path / "t")


def test_strip_and_dest(tmp_path):
    arc = tmp_path / "s.zip"
    arc.write_bytes(pack("s.zip", {"sketch/n1/a.JPEG": b"a", "other/b": b"b"}))
    src = fetch.Source("s.zip", extract=True, strip="sketch", dest="images")
    fetch.extract_source(arc, src, tmp_path / "ds")
    assert (tmp_path / "ds" / "images" / "n1" / "a.JPEG").read_bytes() == b"a"
    assert not (tmp_path / "ds" / "other").exists()
