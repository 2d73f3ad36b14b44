"""The architecture registry and the one loader: local folders, hub repos (offline cache), errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from v2a_sampler import sample
from v2a_sampler.denoisers import Denoiser, FlowSchedule, Prediction
from v2a_sampler.models import (
    NULL_LABEL,
    DenoiserModule,
    ToyMLP,
    build,
    from_pretrained,
    load_config,
    register_architecture,
    save_pretrained,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny(**protocol) -> ToyMLP:
    torch.manual_seed(0)
    m = build("mlp", {"hidden_dim": 8, "num_layers": 1, "num_classes": 3}, **protocol)
    with torch.no_grad():  # the output layer starts at zero; make the function non-trivial
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def inputs(n: int = 6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g)
    t = torch.rand(n, generator=g)
    return x, t, {"label": torch.tensor([0, 1, 2, 0, 1, 2][:n])}


def test_mlp_speaks_the_protocol():
    m = tiny()
    assert isinstance(m, Denoiser)
    assert m.prediction is Prediction.VELOCITY and m.condition_names == ("label",) and m.amg_weight is None
    x, t, cond = inputs()
    out = m(x, t, cond)
    assert out.shape == x.shape and out.dtype == x.dtype
    # dropping the label = the learned null class, also expressible per row with NULL_LABEL
    dropped = m.drop(cond, ["label"])
    assert dropped == {"label": None}
    null_rows = m(x, t, {"label": torch.full((6,), NULL_LABEL)})
    assert torch.equal(m(x, t, dropped), null_rows)
    assert torch.equal(m(x, t, None), null_rows)
    assert not torch.allclose(out, null_rows)
    with pytest.raises(ValueError, match="unknown condition"):
        m.drop(cond, ["text"])
    with pytest.raises(ValueError, match="labels must be in"):
        m(x, t, {"label": torch.full((6,), 3)})


def test_local_round_trip_keeps_weights_and_protocol(tmp_path):
    m = tiny(prediction="eps", schedule={"type": "flow", "noise_at": 0.0}, amg_weight=0.4)
    folder = save_pretrained(m, tmp_path / "model", {"training": {"iteration": 7}})
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "mlp" and cfg["arch_kwargs"]["hidden_dim"] == 8
    assert cfg["schedule"] == {"type": "flow", "noise_at": 0.0} and cfg["prediction"] == "eps"
    assert cfg["amg_weight"] == 0.4 and cfg["condition_names"] == ["label"] and cfg["training"] == {"iteration": 7}

    back = from_pretrained(folder)
    assert isinstance(back, ToyMLP) and not back.training
    assert back.prediction is Prediction.EPS and back.schedule == FlowSchedule(0.0) and back.amg_weight == 0.4
    assert back.config["training"]["iteration"] == 7
    x, t, cond = inputs()
    assert torch.equal(back(x, t, cond), m(x, t, cond))

    as64 = from_pretrained(folder, dtype="float64")
    assert next(as64.parameters()).dtype == torch.float64
    assert torch.allclose(as64(x.double(), t, cond), m(x, t, cond).double(), atol=1e-5)


def test_float16_storage_halves_the_file_and_loads_back_as_float32(tmp_path):
    from safetensors.torch import load_file

    m = tiny()
    full = save_pretrained(m, tmp_path / "full")
    half = save_pretrained(m, tmp_path / "half", storage_dtype="float16")
    stored = load_file(str(half / "model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    saved = (full / "model.safetensors").stat().st_size - (half / "model.safetensors").stat().st_size
    assert abs(saved - 2 * sum(v.numel() for v in stored.values())) < 64  # two bytes per weight (headers differ)
    cfg = json.loads((half / "config.json").read_text())
    assert cfg["dtype"] == "float32" and cfg["storage_dtype"] == "float16"
    back = from_pretrained(half)
    for name, p in back.named_parameters():  # float32 parameters holding the float16-rounded weights
        assert p.dtype == torch.float32
        assert torch.equal(p, dict(m.named_parameters())[name].detach().half().float())
    x, t, cond = inputs()
    assert torch.allclose(back(x, t, cond), m(x, t, cond), atol=1e-2)
    with pytest.raises(
        ValueError, match=r"storage_dtype must be one of \('float32', 'float16', 'bfloat16'\), got 'int"
    ):
        save_pretrained(m, tmp_path / "bad", storage_dtype="int8")
    with pytest.raises(ValueError, match=r"config keys \['storage_dtype'\] are set from the module itself"):
        save_pretrained(m, tmp_path / "bad", {"storage_dtype": "float16"})


def test_loaded_model_samples_with_guidance(tmp_path):
    save_pretrained(tiny(), tmp_path / "good")
    save_pretrained(tiny(schedule={"type": "flow", "noise_at": 1.0}), tmp_path / "bad")
    good = from_pretrained(tmp_path, subfolder="good")
    bad = from_pretrained(tmp_path, subfolder="bad")
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    cond = {"label": torch.tensor([0, 1, 2, 0, 1])}
    x, info = sample(good, noise, cond=cond, guidance="hg(1.5,1.5,2)", bad=bad, solver="heun", steps=4)
    assert x.shape == noise.shape and torch.isfinite(x).all()
    assert info.nfe == 4 * (2 * 4 - 1) and info.nfe_by_role == {"good": 14, "bad": 14}


def _hub_cache(tmp_path, model: DenoiserModule):
    """A folder laid out like the Hugging Face hub cache holding repo acme/toy with the model in subfolder good/."""
    repo = tmp_path / "hub" / "models--acme--toy"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    save_pretrained(model, repo / "snapshots" / COMMIT / "good")
    return tmp_path / "hub"


def test_hub_repo_loads_from_cache_offline(tmp_path, monkeypatch):
    m = tiny()
    monkeypatch.setenv("HF_HUB_CACHE", str(_hub_cache(tmp_path, m)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    back = from_pretrained("acme/toy", subfolder="good")
    x, t, cond = inputs()
    assert torch.equal(back(x, t, cond), m(x, t, cond))
    assert load_config("acme/toy", subfolder="good")["architecture"] == "mlp"


def test_reading_a_hub_config_downloads_no_weights(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(_hub_cache(tmp_path, tiny())))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked, real = [], huggingface_hub.snapshot_download

    def spy(*args, **kwargs):
        asked.append(kwargs["allow_patterns"])
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    assert load_config("acme/toy", subfolder="good")["architecture"] == "mlp"
    from_pretrained("acme/toy", subfolder="good")
    assert asked == [["good/config.json", "good/pipeline.json"],
                     ["good/config.json", "good/pipeline.json", "good/model.safetensors"]]  # fmt: skip


def test_hub_unavailable_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(_hub_cache(tmp_path, tiny())))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="cannot get model 'acme/missing' from the Hugging Face Hub") as e:
        from_pretrained("acme/missing")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no config.json"):
        from_pretrained("acme/toy", subfolder="nope")


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="neither a local folder nor a Hugging Face repo id"):
        from_pretrained(str(tmp_path / "does" / "not" / "exist"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        from_pretrained(tmp_path / "empty")
    folder = save_pretrained(tiny(), tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "architecture": "nope"}))
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "arch_kwargs": {**cfg["arch_kwargs"], "hidden_dim": 16}}))
    with pytest.raises(ValueError, match="does not match architecture"):
        from_pretrained(folder)
    shutil.rmtree(folder)
    with pytest.raises(ValueError, match="set from the module itself"):
        save_pretrained(tiny(), tmp_path / "x", {"architecture": "other"})


def test_registry_is_generic():
    class Scale(DenoiserModule):
        def __init__(self, k: float = 2.0) -> None:
            super().__init__()
            self.arch_kwargs = {"k": k}
            self.w = torch.nn.Parameter(torch.tensor(k))

        def forward(self, x, t, cond=None):
            return self.w * x

    register_architecture("test_scale", Scale)
    register_architecture("test_scale", Scale)  # idempotent for the same class
    m = build("test_scale", {"k": 3.0}, prediction="x0")
    assert m.prediction is Prediction.X0 and float(m(torch.ones(1, 2), torch.zeros(1), None)[0, 0].detach()) == 3.0
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("test_scale", ToyMLP)
    with pytest.raises(TypeError, match="DenoiserModule subclass"):
        register_architecture("plain", torch.nn.Linear)
    with pytest.raises(ValueError, match="cannot build architecture"):
        build("mlp", {"width": 3})
