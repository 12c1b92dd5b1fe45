"""Can open_clip's pretrained weights be had *now*? Decided in about a second, before open_clip's
downloader spends a minute retrying an unreachable host (issue 17: ~55 s to say "offline").

- cached (Hugging Face hub cache, or open_clip's URL cache): load; if the host is unreachable,
  the hub runs in offline mode for that load, so it does not retry before using the cache;
- not cached, ``HF_HUB_OFFLINE`` set or the host (or the configured HTTPS proxy) unreachable
  within a few seconds: a one-line ``UserError`` naming the fix;
- otherwise: download as usual.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

PROBE_SECONDS = 4.0
HF_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _candidates(filename: str) -> list[str]:
    """open_clip tries a .safetensors twin of a .bin/.pth first."""
    if not filename:
        return list(HF_WEIGHTS)
    out = [filename]
    if filename.endswith((".bin", ".pth")):
        out.insert(0, filename[:-4] + ".safetensors")
    return out


def _hub_cached(repo_id: str, filename: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for name in _candidates(filename):
        try:
            found = try_to_load_from_cache(repo_id, name)
        except Exception:  # a malformed cache: let the real load decide
            continue
        if isinstance(found, str) and os.path.isfile(found):
            return True
    return False


def where(cfg: dict) -> tuple[str, bool]:
    """(host the weights come from, already cached) for an open_clip pretrained cfg."""
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import constants

        repo_id, filename = os.path.split(hub)  # as open_clip: "org/model/" means the default file names
        return urlparse(constants.ENDPOINT).hostname or "huggingface.co", _hub_cached(repo_id, filename)
    url = cfg.get("url", "")
    cached = (Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(urlparse(url).path)).is_file()
    return urlparse(url).hostname or "", cached


def reachable(host: str, port: int = 443, seconds: float = PROBE_SECONDS) -> bool:
    """A TCP connection to ``host`` (or to the HTTPS proxy that would carry it) within ``seconds``;
    the DNS lookup is inside the time limit too."""
    proxy = urllib.request.getproxies().get("https")
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or host, p.port or 3128
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=seconds).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(seconds)
    return bool(ok)


def offline_flag() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


@contextmanager
def hub_offline() -> Iterator[None]:
    """The hub client uses its cache without asking the network (read at call time)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def repo_plan(repo_id: str, filenames: tuple[str, ...], probe=reachable) -> str:
    """``cache`` | ``download`` | ``unavailable: why`` for files of a Hugging Face repository (a
    tokenizer, a text tower's config): cached when any of ``filenames`` is."""
    if any(_hub_cached(repo_id, f) for f in filenames):
        return "cache"
    if offline_flag():
        return "unavailable: HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    return "download" if probe(host) else f"unavailable: {host} cannot be reached"


def plan(cfg: dict, probe=reachable) -> str:
    """``download`` | ``cache`` (load from the cache, hub offline) | ``unavailable: why``."""
    if not cfg or "file" in cfg:
        return "download"
    host, cached = where(cfg)
    if offline_flag():
        return "cache" if cached else "unavailable: HF_HUB_OFFLINE is set and they are not in the local cache"
    if probe(host):
        return "download"
    return "cache" if cached else f"unavailable: {host} cannot be reached and they are not in the local cache"
