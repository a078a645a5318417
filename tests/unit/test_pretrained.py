"""The library face (``pipeline3d.pretrained``): each kind of model, saved by the workflow's writer and by
``save_pretrained``, reloads in a fresh interpreter with bit-identical outputs; damaged or missing files are errors
naming the folder and the file; ``import pipeline3d`` stays torch-free."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import pipeline3d
from overfit import single_thread, tiny_encoder  # noqa: F401 (single_thread: autouse fixture)
from pipeline3d.embed.backbones import build_text_backbone
from pipeline3d.embed.metric_head import build_head, project, save_metric_head
from pipeline3d.embed.retrieval_head import RetrievalModel, save_retrieval_head
from pipeline3d.embed.text3d_alignment import save_alignment
from pipeline3d.models.heads import ProjectionHead
from pipeline3d.models.text_tower import PartiallyFrozenTextTower
from pipeline3d.objectives.infonce import SymmetricInfoNCE
from pipeline3d.objectives.text3d_alignment import TextShapeAlignment
from pipeline3d.pretrained import CONFIG_NAME, TEXT_TOWER_NAME, WEIGHTS_NAME
from pipeline3d.train.export import save_encoder
from synthetic_tokens import make_batch, n_positions

KINDS = ("encoder", "metric_head", "retrieval_head", "alignment")
CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3},
}
SHAPE_DIM = 12
METRIC_CONFIG = {
    "in_dim": SHAPE_DIM,
    "out_dim": 6,
    "hidden": 16,
    "layers": 2,
    "dropout": 0.1,
    "normalize": True,
    "standardize": True,
}

# What a user's script does: load each folder, run the model on the saved inputs, save the outputs.
CHILD = r"""
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import pipeline3d
from pipeline3d.embed.metric_head import project

torch.set_num_threads(1)
root = Path(sys.argv[1])
x = {k: v.clone() for k, v in load_file(root / "inputs.safetensors").items()}  # aligned copies, as in the test


@torch.no_grad()
def outputs(kind, model):
    if kind == "encoder":
        return {"h": model(x["feat"], x["type_id"], x["pos"], x["valid"], causal=False).h}
    if kind == "metric_head":
        return {"out": torch.from_numpy(project(x["vectors"].numpy(), model))}
    if kind == "retrieval_head":
        return {"out": torch.from_numpy(model.embed(x["vectors"].numpy()))}
    return {"text": model.tower.encode(x["tokens"]), "shape": model.projection(x["vectors"])}


loaders = {"encoder": pipeline3d.load_encoder, "metric_head": pipeline3d.load_metric_head,
           "retrieval_head": pipeline3d.load_retrieval_head, "alignment": pipeline3d.load_alignment}
out = {}
for kind in sys.argv[2:]:
    for layout, load in (("workflow", loaders[kind]), ("hub", pipeline3d.from_pretrained)):
        for name, value in outputs(kind, load(root / kind / layout)).items():
            out[f"{kind}/{layout}/{name}"] = value.contiguous()
save_file(out, root / "outputs.safetensors")
"""


def _run_child(root: Path, kinds=KINDS) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(root), *kinds], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


@torch.no_grad()
def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Move every trainable tensor off its initial value (so a load that kept the base weights shows)."""
    gen = torch.Generator().manual_seed(seed)
    for param in module.parameters():
        if param.requires_grad:
            param.add_(0.05 * torch.randn(param.shape, generator=gen))


def _build(root: Path) -> tuple[dict, dict]:
    """The four models, random-init, each saved in ``<root>/<kind>/workflow`` (the workflow's writer and file
    names) and ``<root>/<kind>/hub`` (save_pretrained); returns (inputs, the in-process outputs)."""
    batch = make_batch(2, 6, 5, seed=3)
    rng = np.random.default_rng(0)
    x = {k: batch[k] for k in ("feat", "type_id", "pos", "valid")}
    x["vectors"] = torch.from_numpy(rng.normal(size=(7, SHAPE_DIM)).astype(np.float32))
    # torch-allocated copies on both sides: CPU matmul kernels may round the last bit differently for an input
    # buffer at another alignment (a tensor read straight from a safetensors file sits at any offset)
    x = {k: v.clone() for k, v in x.items()}
    models, expected = {}, {}

    encoder = tiny_encoder(n_positions(6, 5), seed=1).eval()
    save_encoder(
        encoder, root / "encoder/workflow/encoder.safetensors", root / "encoder/workflow/encoder.json", {"steps": 7}
    )
    models["encoder"] = encoder
    expected["encoder"] = {"h": encoder(x["feat"], x["type_id"], x["pos"], x["valid"], causal=False).h}

    head = build_head(METRIC_CONFIG, seed=2)
    head.fit_input(rng.normal(size=(50, SHAPE_DIM)) + 3.0)  # buffers away from their defaults: saved with the weights
    save_metric_head(
        head,
        root / "metric_head/workflow/head.safetensors",
        root / "metric_head/workflow/head.json",
        {"config": METRIC_CONFIG, "source": {"model": "toy", "weights_sha256": "ab" * 32}},
    )
    models["metric_head"] = head
    expected["metric_head"] = {"out": torch.from_numpy(project(x["vectors"].numpy(), head))}

    torch.manual_seed(4)
    retrieval = RetrievalModel(SHAPE_DIM, 8, 4, margin=0.3, scale=16.0, token_dim=32, text_dim=16, n_tokens=2)
    for _ in range(3):  # BN running statistics away from (0, 1)
        retrieval(torch.randn(16, SHAPE_DIM) * 2 + 1)
    retrieval.eval()
    save_retrieval_head(
        retrieval,
        {"class_names": ["a", "b", "c", "d"]},
        root / "retrieval_head/workflow/head.safetensors",
        root / "retrieval_head/workflow/head.json",
    )
    models["retrieval_head"] = retrieval
    expected["retrieval_head"] = {"out": torch.from_numpy(retrieval.embed(x["vectors"].numpy()))}

    clip = root / "clip"
    clip.mkdir()
    (clip / "open_clip_config.json").write_text(json.dumps({"model_cfg": CLIP_CFG}))
    text_config = {"model": f"local-dir:{clip}", "weights": None, "random_init": True}
    backbone = build_text_backbone(text_config["model"], allow_random_init=True, seed=5)
    tower = PartiallyFrozenTextTower(backbone.model, 2)
    _perturb(tower, 6)
    torch.manual_seed(7)
    projection = ProjectionHead(SHAPE_DIM, 16, hidden=32).eval()
    folder = root / "alignment/workflow"
    save_alignment(
        TextShapeAlignment(tower, projection, SymmetricInfoNCE(0.07)),
        backbone,
        folder / "projection.safetensors",
        folder / "text_tower.safetensors",
        folder / "head.json",
        projection_config={"in_dim": SHAPE_DIM, "out_dim": 16, "hidden": 32},
        text_config=text_config,
        seed=5,
        extra={"dataset": "toy", "fold": 0},
    )
    x["tokens"] = backbone.tokenizer(["a 3D model of a chair", "a lamp", "a boat seen from the side"])
    expected["alignment"] = {"text": tower.encode(x["tokens"]), "shape": projection(x["vectors"])}
    # an alignment is saved as what the loader returns (the base tower + its trained blocks, the projection)
    models["alignment"] = pipeline3d.load_alignment(folder)

    for kind, model in models.items():
        assert pipeline3d.save_pretrained(model, root / kind / "hub") == root / kind / "hub"
    save_file({k: v.contiguous() for k, v in x.items()}, root / "inputs.safetensors")
    return x, expected


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The saved folders, the in-process outputs, and the outputs of a fresh interpreter that loaded them."""
    root = tmp_path_factory.mktemp("pretrained")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            inputs, expected = _build(root)
    finally:
        torch.set_num_threads(threads)
    proc = _run_child(root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, inputs, expected, load_file(root / "outputs.safetensors")


@pytest.mark.parametrize("layout", ["workflow", "hub"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_fresh_process_reproduces_the_outputs_bit_for_bit(saved, kind, layout):
    _, _, expected, fresh = saved
    for name, want in expected[kind].items():
        got = fresh[f"{kind}/{layout}/{name}"]
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.numpy().tobytes() == want.numpy().tobytes(), f"{kind}/{layout}/{name}"
        assert want.abs().sum() > 0


def test_save_pretrained_writes_the_hub_layout_and_keeps_the_provenance(saved):
    root = saved[0]
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    assert (CONFIG_NAME, WEIGHTS_NAME) == (hub_constants.CONFIG_NAME, hub_constants.SAFETENSORS_SINGLE_FILE)
    for kind in KINDS:
        files = sorted(p.name for p in (root / kind / "hub").iterdir())
        extra = [TEXT_TOWER_NAME] if kind == "alignment" else []
        assert files == sorted([CONFIG_NAME, WEIGHTS_NAME, *extra]), (kind, files)  # no temporary left behind
    config = json.loads((root / "encoder/hub" / CONFIG_NAME).read_text())
    assert config["encoder"] == "query_nepa_tiny" and config["config"]["n_positions"] == n_positions(6, 5)
    assert config["weights"] == WEIGHTS_NAME
    config = json.loads((root / "metric_head/hub" / CONFIG_NAME).read_text())
    assert {k: config[k] for k in METRIC_CONFIG} == METRIC_CONFIG  # read off the head's layers
    config = json.loads((root / "alignment/hub" / CONFIG_NAME).read_text())
    workflow = json.loads((root / "alignment/workflow/head.json").read_text())
    assert (config["dataset"], config["fold"], config["text"]["seed"]) == ("toy", 0, 5)
    assert config["text"]["sha256"] == workflow["text"]["sha256"]  # the same trained text weights, byte for byte
    # a model loaded from the workflow's folder keeps its JSON's provenance when saved again
    head = pipeline3d.load_retrieval_head(root / "retrieval_head/workflow")
    pipeline3d.save_pretrained(head, root / "retrieval_again")
    assert json.loads((root / "retrieval_again" / CONFIG_NAME).read_text())["class_names"] == ["a", "b", "c", "d"]
    head = pipeline3d.load_metric_head(root / "metric_head/workflow")
    pipeline3d.save_pretrained(head, root / "metric_again")
    assert json.loads((root / "metric_again" / CONFIG_NAME).read_text())["source"]["model"] == "toy"
    assert (root / "metric_again" / WEIGHTS_NAME).read_bytes() == (root / "metric_head/hub" / WEIGHTS_NAME).read_bytes()


def test_huggingface_hub_mixin_loads_the_folder(saved):
    hub = pytest.importorskip("huggingface_hub")
    root, inputs, expected, _ = saved

    class HubRetrievalHead(RetrievalModel, hub.PyTorchModelHubMixin):
        def __init__(self, config: dict) -> None:  # the mixin passes config.json's "config" (the architecture)
            super().__init__(**config)

    model = HubRetrievalHead.from_pretrained(root / "retrieval_head/hub").eval()
    assert model.embed(inputs["vectors"].numpy()).tobytes() == expected["retrieval_head"]["out"].numpy().tobytes()


def test_explicit_file_paths_still_work(saved):
    root = saved[0]
    folder = root / "retrieval_head/workflow"
    head = pipeline3d.load_retrieval_head(folder / "head.safetensors", folder / "head.json")
    assert isinstance(head, RetrievalModel) and not head.training
    with pytest.raises(ValueError, match="json_path"):
        pipeline3d.load_retrieval_head(folder / "head.safetensors")


def _copy(saved, kind: str, layout: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved[0] / kind / layout, tmp_path / kind))


@pytest.mark.parametrize(
    "kind, layout, name",
    [
        ("encoder", "hub", WEIGHTS_NAME),
        ("retrieval_head", "workflow", "head.safetensors"),
        ("alignment", "hub", TEXT_TOWER_NAME),
    ],
)
def test_damaged_or_missing_weights_are_errors_naming_the_folder_and_file(saved, tmp_path, kind, layout, name):
    folder = _copy(saved, kind, layout, tmp_path)
    data = bytearray((folder / name).read_bytes())
    data[-1] ^= 0xFF
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256") as err:
        pipeline3d.from_pretrained(folder)
    assert str(folder / name) in str(err.value)
    (folder / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"{name} is missing") as err:
        pipeline3d.from_pretrained(folder)
    assert str(folder) in str(err.value)


def test_bad_folders_are_clear_errors(saved, tmp_path):
    root = saved[0]
    folder = _copy(saved, "metric_head", "hub", tmp_path)
    (folder / CONFIG_NAME).write_text((folder / CONFIG_NAME).read_text()[:40])  # truncated
    with pytest.raises(ValueError, match=f"{folder / CONFIG_NAME}: cannot read it as JSON"):
        pipeline3d.load_metric_head(folder)
    with pytest.raises(ValueError, match="holds a retrieval head .* use pipeline3d.load_retrieval_head"):
        pipeline3d.load_metric_head(root / "retrieval_head/workflow")  # both heads write head.json
    with pytest.raises(FileNotFoundError, match="no such directory"):
        pipeline3d.load_encoder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no encoder here.*encoder\.json.*subfolders hold one: hub, workflow$"):
        pipeline3d.load_encoder(root / "encoder")  # one level up
    with pytest.raises(FileNotFoundError, match="no pipeline3d model here"):
        pipeline3d.from_pretrained(root / "clip")
    with pytest.raises(TypeError, match="cannot save a dict"):
        pipeline3d.save_pretrained({}, tmp_path / "dict")
    assert not (tmp_path / "dict").exists()


def test_an_alignment_from_file_weights_asks_for_them(saved, tmp_path):
    folder = _copy(saved, "alignment", "workflow", tmp_path)
    head = json.loads((folder / "head.json").read_text())
    head["text"].update(model="ViT-B-32", weights_source="file", weights_file="open_clip_model.safetensors")
    (folder / "head.json").write_text(json.dumps(head))
    with pytest.raises(ValueError, match="open_clip_model.safetensors.*pass text_weights"):
        pipeline3d.load_alignment(folder)


def test_import_pipeline3d_stays_torch_free():
    code = (
        "import sys, pipeline3d\n"
        "assert 'torch' not in sys.modules, 'import pipeline3d imported torch'\n"
        "assert {'load_encoder', 'save_pretrained', 'from_pretrained'} <= set(dir(pipeline3d))\n"
        "from pipeline3d import config\n"  # submodules still import through the lazy __getattr__
        "assert 'torch' not in sys.modules, 'a submodule import went through the library face'\n"
        "load = pipeline3d.load_retrieval_head\n"
        "assert 'torch' in sys.modules and load.__module__ == 'pipeline3d.pretrained'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        pipeline3d.nonesuch  # noqa: B018
