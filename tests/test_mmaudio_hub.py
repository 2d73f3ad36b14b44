"""Official MMAudio weight files: the download table, a hub cache made here, checksums, loading, conversion."""

from __future__ import annotations

import re

import pytest
import torch
from test_mmaudio import TINY, _inputs

from v2a_sampler.mmaudio import hub
from v2a_sampler.mmaudio.checkpoints import CheckpointError
from v2a_sampler.mmaudio.network import STALE_KEYS, VARIANTS, MMAudio
from v2a_sampler.models import from_pretrained

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _tiny_checkpoint(path, seed=0, stale=True):
    torch.manual_seed(seed)
    m = MMAudio(**TINY)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.2)
    state = m.state_dict()
    if stale:  # older official checkpoints still carry these buffers
        state.update({k: torch.zeros(3) for k in STALE_KEYS})
    torch.save(state, path)
    return m.eval()


def _fake_hub(root, repo_id, files):
    """A Hugging Face cache laid out as huggingface_hub writes it, holding ``files`` ({name: source path})."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    for name, src in files.items():
        dst = repo / "snapshots" / FAKE_COMMIT / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    return root


def test_download_table_covers_every_variant():
    for variant in VARIANTS:
        need = hub.files_for(variant)
        assert set(need) == {"network", "vae", "vocoder", "synchformer"}
        assert all(n in hub.FILES for n in need.values())
        assert hub.FILES[need["network"]].filename == f"weights/mmaudio_{variant}.pth"
    assert hub.files_for("small_16k")["vocoder"] == "bigvgan_16k" and hub.files_for("large_44k_v2")["vae"] == "vae_44k"
    for entry in hub.FILES.values():
        assert entry.md5 is None or re.fullmatch(r"[0-9a-f]{32}", entry.md5)
    with pytest.raises(ValueError, match="unknown MMAudio variant 'huge'"):
        hub.files_for("huge")


def test_cached_download_verifies_md5_once(tmp_path, monkeypatch):
    ckpt = tmp_path / "mmaudio_tiny.pth"
    model = _tiny_checkpoint(ckpt)
    cache = _fake_hub(tmp_path / "cache", hub.REPO_ID, {"weights/mmaudio_tiny.pth": ckpt})
    good = {"tiny": hub.WeightFile(hub.REPO_ID, "weights/mmaudio_tiny.pth", hub.md5sum(ckpt), "1M")}
    path = hub.download("tiny", cache_dir=cache, local_files_only=True, table=good)
    assert path.read_bytes() == ckpt.read_bytes()
    assert path.with_name(path.name + ".md5ok").is_file()
    calls = []
    monkeypatch.setattr(hub, "md5sum", lambda p: calls.append(p) or "x")
    hub.download("tiny", cache_dir=cache, local_files_only=True, table=good)
    assert calls == []  # verified before: not hashed again
    monkeypatch.undo()

    loaded = hub.load_network(path, "small_16k", **{k: v for k, v in TINY.items()})
    x, t, cond = _inputs(model, 2.0)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, cond), model(x, t, cond))

    bad = {"tiny": hub.WeightFile(hub.REPO_ID, "weights/mmaudio_tiny.pth", "0" * 32, "1M")}
    path.with_name(path.name + ".md5ok").unlink()
    with pytest.raises(CheckpointError, match="checksum mismatch .* expected 0{32}\\); delete it and retry"):
        hub.download("tiny", cache_dir=cache, local_files_only=True, table=bad)


def test_offline_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot get hkchengrex/MMAudio/weights/mmaudio_small_44k.pth "
                       r"\(offline: cache only\)") as e:  # fmt: skip
        hub.download("small_44k", cache_dir=tmp_path, local_files_only=True)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown MMAudio weight file 'nope'"):
        hub.download("nope", cache_dir=tmp_path, local_files_only=True)


def test_without_network_the_cache_is_used_at_once(tmp_path, monkeypatch):
    """No hub retries on a machine without network: one connection check, then the cache (or one clear line)."""
    import socket
    from urllib.parse import urlparse

    import huggingface_hub
    from huggingface_hub import constants

    from v2a_sampler.models import registry

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in registry.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(registry, "_UNREACHABLE", {})
    tries = []

    def no_dns(address, timeout=None):
        tries.append((address, timeout))
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(registry.socket, "create_connection", no_dns)
    modes = []
    real_download, real_snapshot = huggingface_hub.hf_hub_download, huggingface_hub.snapshot_download
    monkeypatch.setattr(
        huggingface_hub,
        "hf_hub_download",
        lambda *a, **kw: modes.append(kw["local_files_only"]) or real_download(*a, **kw),
    )
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda *a, **kw: modes.append(kw["local_files_only"]) or real_snapshot(*a, **kw))  # fmt: skip
    host = urlparse(constants.ENDPOINT).hostname
    with pytest.raises(CheckpointError) as e:
        hub.download("small_16k", cache_dir=tmp_path)
    assert str(e.value) == (
        f"cannot get {hub.REPO_ID}/weights/mmaudio_small_16k.pth (601M download): no network "
        f"({host}: [Errno -2] Name or service not known) and not in the local Hugging Face cache"
    )
    with pytest.raises(RuntimeError, match=f"cannot get model 'org/model': no network \\({host}: "):
        registry.resolve_folder("org/model", cache_dir=tmp_path)
    ckpt = tmp_path / "mmaudio_tiny.pth"  # a cached file needs no network
    _tiny_checkpoint(ckpt)
    cache = _fake_hub(tmp_path / "cache", hub.REPO_ID, {"weights/mmaudio_tiny.pth": ckpt})
    table = {"tiny": hub.WeightFile(hub.REPO_ID, "weights/mmaudio_tiny.pth", hub.md5sum(ckpt), "1M")}
    assert hub.download("tiny", cache_dir=cache, table=table).read_bytes() == ckpt.read_bytes()
    assert modes == [True, True, True] and len(tries) == 1  # cache only, and one check per process
    assert tries[0][1] == registry.HUB_CONNECT_TIMEOUT_S
    monkeypatch.setattr(registry, "_UNREACHABLE", {})
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert registry.hub_unreachable() is None and len(tries) == 1  # behind a proxy a direct check proves nothing


def test_bad_checkpoints_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="MMAudio small_16k: no such file"):
        hub.load_network(tmp_path / "missing.pth", "small_16k")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable PyTorch checkpoint"):
        hub.load_network(tmp_path / "junk.pth", "small_16k")
    ckpt = tmp_path / "tiny.pth"
    _tiny_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=r"MMAudio small_44k: .*tiny.pth does not fit: size mismatch"):
        hub.load_network(ckpt, "small_44k", **{**TINY, "latent_dim": 7})


def test_convert_writes_a_from_pretrained_folder(tmp_path):
    ckpt = tmp_path / "tiny.pth"
    model = _tiny_checkpoint(ckpt)
    folder = hub.convert(ckpt, "small_16k", tmp_path / "converted", **TINY)
    loaded = from_pretrained(folder)
    assert isinstance(loaded, MMAudio)
    x, t, cond = _inputs(model, 1.5)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, cond), model(x, t, cond))
