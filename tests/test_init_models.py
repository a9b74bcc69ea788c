"""Whole-model inits (``inits.<name>``: checkpoint, format, arch, img_size, head, mean/std,
key_map, recipe) from the config through ``fundusfm train`` to the prediction paths, and
config/fm-comparison.yaml, the study that compares foundation models with them.

Checkpoints are written with random weights in the published layouts (see
tests/test_formats.py for every format); a tiny ViT stands in for RETFound's ViT-L.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed

sys.path.insert(0, str(Path(__file__).parent))
from test_train_helpers import BINARY_TASK, make_task_table  # noqa: E402

from fundusfm import config as fcfg  # noqa: E402
from fundusfm.models import formats, load_trained  # noqa: E402
from fundusfm.models.factory import NORMALISATIONS, build, input_norm  # noqa: E402
from fundusfm.train import engine  # noqa: E402
from fundusfm.train.cli import build_parser, infer_main, train_main  # noqa: E402
from fundusfm.train.config import DEFAULT_HPARAMS, resolve_hparams  # noqa: E402
from fundusfm.train.data import load_image  # noqa: E402
from fundusfm.train.infer import predict_paths  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VIT = "vit_tiny_patch16_224"  # RETFound's layout at a size the CPU trains in seconds
IMG = 64  # the init's input size: 4 x 4 patches (the checkpoint's grid is 14 x 14)
torch.set_num_threads(1)


def demo() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _with_init(entry: dict, name: str = "vitfm", task: str = "drgrade") -> dict:
    c = demo()
    c["inits"] = {name: entry}
    c["tasks"][task]["inits"] = ["random", name]
    return c


def _problems(c: dict) -> str:
    with pytest.raises(fcfg.ConfigError) as err:
        fcfg.validate(c)
    return str(err.value)


# ----------------------------------------------------------------------------- config: the schema


def test_an_unknown_key_of_an_init_is_refused_naming_it():
    msg = _problems(_with_init({"checkpoint": "w.pth", "input_size": 224}))
    assert "inits.vitfm" in msg and "'input_size' was unexpected" in msg


def test_a_recipe_key_that_is_no_training_hyper_parameter_is_refused():
    msg = _problems(_with_init({"checkpoint": "w.pth", "recipe": {"lr": 1e-4, "blr": 5e-3}}))
    assert "inits.vitfm.recipe.blr: unknown hyper-parameter" in msg and "layer_decay" in msg  # the known keys listed
    assert "recipe.lr" not in msg


@pytest.mark.parametrize("key, value", [("arch", "vit_large_patch16_224"), ("img_size", 224), ("head", "timm"),
                                        ("mean", "imagenet"), ("std", [0.5, 0.5, 0.5])])
def test_a_model_definition_key_inside_the_recipe_is_refused_naming_where_it_goes(key, value):
    msg = _problems(_with_init({"checkpoint": "w.pth", "recipe": {key: value}}))
    assert f"inits.vitfm.recipe.{key}: the model definition is a key of the init itself (inits.vitfm.{key})" in msg


@pytest.mark.parametrize("name", ["random", "imagenet", "fundus"])
def test_a_builtin_init_name_cannot_be_redefined_under_inits(name):
    c = demo()
    c["inits"] = {name: {"checkpoint": "w.pth"}}
    msg = _problems(c)
    assert "inits:" in msg and repr(name) in msg


@pytest.mark.parametrize("key, value", [("format", "retfound"), ("head", "linear"), ("img_size", 8),
                                        ("mean", [0.5, 0.5]), ("std", "imagenet_default"),
                                        ("key_map", {"encoder.": 1})])
def test_a_bad_model_definition_value_is_refused_naming_the_key(key, value):
    msg = _problems(_with_init({"checkpoint": "w.pth", key: value}))
    assert f"inits.vitfm.{key}" in msg


def test_an_init_entry_gets_its_defaults():
    c = fcfg.validate(_with_init({"checkpoint": "w.pth"}))
    assert c["inits"]["vitfm"] == {"checkpoint": "w.pth", "format": "auto", "trust_pickle": False,
                                   "allow_partial": False, "key_map": {}, "recipe": {}}


# ----------------------------------------------------------------------------- config: precedence


def _layered() -> dict:
    """A key at every level: train < task hparams < init recipe < init model definition."""
    c = _with_init({"checkpoint": "w.pth", "format": "retfound_mae", "arch": VIT, "img_size": IMG,
                    "mean": "imagenet", "std": [0.2, 0.3, 0.4],
                    "recipe": {"lr": 3e-4, "layer_decay": 0.65, "drop_path_rate": 0.2}})
    c["train"].update(lr=1e-3, epochs=6, weight_decay=0.05)
    c["tasks"]["drgrade"]["hparams"] = {"lr": 2e-3, "epochs": 9, "img_size": 96, "arch": "resnet18"}
    return fcfg.validate(c)


def test_hparams_precedence_train_then_task_then_recipe_then_model_definition():
    c = _layered()
    base = fcfg.hparams(c, "drgrade")
    assert (base["lr"], base["epochs"], base["img_size"], base["arch"], base["weight_decay"]) == \
        (2e-3, 9, 96, "resnet18", 0.05)  # the task over train
    hp = fcfg.hparams(c, "drgrade", "vitfm")
    assert hp["lr"] == 3e-4 and hp["layer_decay"] == 0.65 and hp["drop_path_rate"] == 0.2  # recipe over the task
    assert hp["epochs"] == 9 and hp["weight_decay"] == 0.05  # what the recipe leaves: the task's, then train's
    assert (hp["arch"], hp["img_size"], hp["mean"], hp["std"]) == (VIT, IMG, "imagenet", [0.2, 0.3, 0.4])
    assert hp["head"] == c["train"]["head"]  # not defined by the init: the task's (here train's)
    # builtin inits and the pretraining train with the task's settings
    assert fcfg.hparams(c, "drgrade", "random") == base
    assert fcfg.hparams(c, "multidisease", "vitfm")["arch"] == VIT  # the init is a whole model in any task
    assert fcfg.hparams(c, "multidisease")["arch"] == c["train"]["arch"]


def test_model_definition_and_recipe_overrides_of_an_init():
    c = _layered()
    assert fcfg.model_definition(c, "drgrade", "vitfm") == {
        "arch": VIT, "img_size": IMG, "head": c["train"]["head"], "model_args": {}, "mean": "imagenet",
        "std": [0.2, 0.3, 0.4]}
    # a builtin init: the task's model, normalisation left to the architecture (None)
    assert fcfg.model_definition(c, "drgrade", "random") == {
        "arch": "resnet18", "img_size": 96, "head": c["train"]["head"], "model_args": {}, "mean": None, "std": None}
    assert fcfg.recipe_overrides(c, "drgrade", "vitfm") == {
        "lr": 3e-4, "layer_decay": 0.65, "drop_path_rate": 0.2, "arch": VIT, "img_size": IMG,
        "mean": "imagenet", "std": [0.2, 0.3, 0.4]}
    assert fcfg.recipe_overrides(c, "drgrade", "random") == {}
    assert fcfg.model_definition(c, "drgrade", "vitfm").keys() == set(fcfg.MODEL_KEYS)


def test_init_args_carry_format_key_map_and_trust_flags_to_the_train_cli():
    c = fcfg.validate(_with_init({"checkpoint": "weights/rf.pth", "format": "retfound_mae",
                                  "key_map": {"encoder.": "", "text.": None}, "trust_pickle": True,
                                  "allow_partial": True}))
    args = fcfg.init_args(c, "vitfm")
    assert args[:4] == ["--init", "checkpoint:weights/rf.pth", "--init-name", "vitfm"]
    assert args[args.index("--checkpoint-format") + 1] == "retfound_mae"
    assert "--trust-pickle" in args and "--allow-partial" in args
    parsed = build_parser().parse_args(["--table", "t.csv", "--task-json", BINARY_TASK, "--out", "o", *args])
    assert parsed.checkpoint_format == "retfound_mae"
    assert parsed.key_map_json == {"encoder.": "", "text.": None}  # null (drop) survives the JSON round trip
    plain = fcfg.validate(_with_init({"checkpoint": "weights/rf.pth"}))
    assert fcfg.init_args(plain, "vitfm") == ["--init", "checkpoint:weights/rf.pth", "--init-name", "vitfm"]


# ----------------------------------------------------------------------------- fundusfm train


def _mae_state(seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """An MAE pretraining state dict as RETFound publishes it: the encoder in timm's
    VisionTransformer names at 224 px (14 x 14 grid) plus MAE's decoder and its (1, 1, D)
    mask token (facebookresearch/mae models_mae.py; see tests/test_formats.py)."""
    torch.manual_seed(seed)
    enc = timm.create_model(VIT, num_classes=0)
    with torch.no_grad():
        enc.pos_embed.normal_(0, 0.5)  # a grid whose resampling is visible
    state = dict(enc.state_dict())
    g = torch.Generator().manual_seed(seed + 1)
    dec = 16
    state["decoder_embed.weight"] = torch.randn(dec, enc.embed_dim, generator=g)
    state["decoder_embed.bias"] = torch.zeros(dec)
    state["mask_token"] = torch.randn(1, 1, dec, generator=g)
    state["decoder_pos_embed"] = torch.randn(1, enc.pos_embed.shape[1], dec, generator=g)
    state["decoder_norm.weight"], state["decoder_norm.bias"] = torch.ones(dec), torch.zeros(dec)
    state["decoder_pred.weight"] = torch.randn(16 * 16 * 3, dec, generator=g)
    return state, enc


def _save_mae(path: Path, state: dict) -> Path:
    # mae util/misc.py save_model: {"model", "optimizer", "epoch", "scaler", "args"}
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 799, "scaler": {},
                "args": argparse.Namespace(model="mae_vit_tiny_patch16", input_size=224, mask_ratio=0.75)}, path)
    return path


ENTRY = {"format": "retfound_mae", "arch": VIT, "img_size": IMG, "head": "timm", "mean": "imagenet",
         "std": [0.2, 0.3, 0.4],
         # lr ~ 0: the trained weights stay those loaded (to 1e-9), so the load itself is checked
         "recipe": {"lr": 1e-10, "min_lr": 0.0, "drop_path_rate": 0.2, "epochs": 1, "patience": None}}
TINY_TRAIN = {"arch": "resnet10t", "head": "paper", "img_size": 32, "batch_size": 8, "epochs": 2, "lr": 1e-3,
              "warmup_epochs": 0, "amp": "none", "log_every": 0, "channels_last": False}


def _study(checkpoint: Path, **entry) -> dict:
    c = _with_init({"checkpoint": str(checkpoint), **copy.deepcopy(ENTRY), **entry})
    c["train"] = dict(TINY_TRAIN)
    return fcfg.validate(c)


def _train(c: dict, table: Path, out: Path, init: str = "vitfm") -> int:
    """``fundusfm train`` of one run, with the arguments the workflow builds from the config."""
    return train_main(["--table", str(table), "--task-json", BINARY_TASK, "--fold", "0", "--fraction", "1.0",
                       "--seed", "0", *fcfg.init_args(c, init),
                       "--hparams-json", fcfg.to_json(fcfg.hparams(c, "drgrade", init)),
                       "--out", str(out), "--external", "ext", "--device", "cpu", "--workers", "0"])


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    """One fine-tune from a RETFound-MAE checkpoint (its own arch, size, normalisation and
    drop path), with the timm models the engine built."""
    root = tmp_path_factory.mktemp("mae")
    table = make_task_table(root, size=40)  # processed images at 40 px: the loader resizes them to 64
    state, enc = _mae_state()
    ckpt = _save_mae(root / "RETFound_cfp_weights.pth", state)
    c = _study(ckpt)
    built = []
    mp = pytest.MonkeyPatch()
    real_build = engine.build
    mp.setattr(engine, "build", lambda hp, n: built.append(real_build(hp, n)) or built[-1])
    try:
        rc = _train(c, table, root / "out")
    finally:
        mp.undo()
    assert rc == 0
    return {"root": root, "table": table, "out": root / "out", "state": state, "built": built, "config": c}


def test_model_json_records_the_init_model_definition(mae_run):
    meta = json.loads((mae_run["out"] / "model.json").read_text())
    assert (meta["arch"], meta["img_size"], meta["head"], meta["init"]) == (VIT, IMG, "timm", "vitfm")
    assert meta["mean"] == list(NORMALISATIONS["imagenet"][0]) and meta["std"] == [0.2, 0.3, 0.4]
    assert meta["preprocessing"]["mean"] == meta["mean"] and meta["preprocessing"]["std"] == meta["std"]
    # timm's own default for this ViT is 0.5 / 0.5: the init's normalisation won
    assert input_norm(mae_run["built"][0]) == ([0.5] * 3, [0.5] * 3)


def test_key_report_shows_the_format_and_a_full_backbone_match(mae_run):
    rep = json.loads((mae_run["out"] / "model.json").read_text())["init_report"]
    assert rep["format"] == "retfound_mae"  # named in the config, not detected
    assert not rep["partial"] and rep["missing"] == rep["unexpected"] == rep["shape_mismatch"] == []
    assert rep["head_reinitialised"] == ["head.weight", "head.bias"]
    assert rep["loaded"] == rep["n_model_keys"] - 2  # every backbone key (the class-token ViT loads norm)
    assert {"mask_token", "decoder_embed.weight", "decoder_pos_embed", "decoder_pred.weight"} <= set(rep["dropped"])


def test_position_embeddings_are_resampled_to_the_init_input_size(mae_run):
    trained = load_file(str(mae_run["out"] / "model.safetensors"))
    pos = mae_run["state"]["pos_embed"]
    assert tuple(pos.shape) == (1, 1 + 14 * 14, 192) and tuple(trained["pos_embed"].shape) == (1, 1 + 4 * 4, 192)
    # RETFound's interpolate_pos_embed: class token kept, the grid resized bicubically (no antialias)
    want = resample_abs_pos_embed(pos, new_size=[4, 4], old_size=[14, 14], num_prefix_tokens=1, antialias=False)
    torch.testing.assert_close(trained["pos_embed"], want, rtol=0, atol=1e-6)
    torch.testing.assert_close(trained["blocks.3.attn.qkv.weight"], mae_run["state"]["blocks.3.attn.qkv.weight"],
                               rtol=0, atol=1e-6)


def test_drop_path_rate_of_the_recipe_reaches_the_timm_model(mae_run):
    model = mae_run["built"][0]
    rates = [m.drop_prob for m in model.modules() if isinstance(m, timm.layers.DropPath)]
    # stochastic depth rising linearly over the 12 blocks to the recipe's rate (block 0: none)
    assert len(rates) == 2 * 11 and rates == sorted(rates) and max(rates) == pytest.approx(0.2)
    cfg = json.loads((mae_run["out"] / "train_config.json").read_text())
    assert cfg["hparams"]["drop_path_rate"] == 0.2 and cfg["checkpoint_format"] == "retfound_mae"


def test_drop_path_rate_for_an_architecture_without_stochastic_depth_is_a_clear_error():
    hp = resolve_hparams({"arch": "ghostnet_050", "head": "timm", "img_size": 32, "drop_path_rate": 0.1})
    with pytest.raises(ValueError, match=r"'ghostnet_050' does not take the hparam\(s\) \['drop_path_rate'\]"):
        build(hp, 2)
    assert build(dict(hp, drop_path_rate=0.0), 2).num_classes == 2  # 0: not passed at all


def _probabilities(frame: pd.DataFrame) -> np.ndarray:
    return frame[["prob_normal", "prob_abnormal"]].to_numpy()


def test_load_trained_and_infer_predict_as_training_did_with_the_init_normalisation(mae_run, tmp_path):
    out, table = mae_run["out"], mae_run["table"]
    model, meta = load_trained(out)
    assert not any(m.training for m in model.modules())  # drop path off: inference is deterministic
    test = pd.read_csv(out / "predictions_test.csv", dtype={"image_id": str})
    rows = pd.read_csv(table, dtype={"image_id": str}).set_index("image_id").loc[test["image_id"]]
    prob = predict_paths(model, meta, rows["image"].tolist(), batch_size=5)
    np.testing.assert_allclose(prob, _probabilities(test), atol=1e-5)
    # the normalisation matters: the architecture's default (0.5 / 0.5) predicts otherwise
    other = predict_paths(model, dict(meta, mean=[0.5] * 3, std=[0.5] * 3), rows["image"].tolist())
    assert np.abs(other - _probabilities(test)).max() > 1e-3
    assert infer_main(["--model-dir", str(out), "--table", str(table), "--dataset", "ext",
                       "--out", str(tmp_path / "ext.csv"), "--device", "cpu"]) == 0
    np.testing.assert_allclose(_probabilities(pd.read_csv(tmp_path / "ext.csv")),
                               _probabilities(pd.read_csv(out / "predictions_external_ext.csv")), atol=1e-5)


def test_a_release_of_the_run_rebuilds_the_init_model_and_normalisation(mae_run, tmp_path):
    from fundusfm.preprocess.pipeline import PreprocessSpec
    from fundusfm.release import load_model
    from fundusfm.release.export import export

    out, table = mae_run["out"], mae_run["table"]
    spec = tmp_path / "preprocess_spec.json"
    spec.write_text(json.dumps(asdict(PreprocessSpec(size=40, format="png"))))
    rel = load_model(export(out, tmp_path / "release", preprocess_spec=spec, n_boot=0))
    assert (rel.meta["arch"], rel.meta["img_size"], rel.meta["std"]) == (VIT, IMG, [0.2, 0.3, 0.4])
    assert tuple(rel.model.pos_embed.shape) == (1, 17, 192)
    test = pd.read_csv(out / "predictions_test.csv", dtype={"image_id": str})
    rows = pd.read_csv(table, dtype={"image_id": str}).set_index("image_id").loc[test["image_id"]]
    x = torch.stack([load_image(p, rel.meta["img_size"]) for p in rows["image"]])
    np.testing.assert_allclose(rel.predict(x), _probabilities(test), atol=1e-5)


def test_a_key_map_that_strips_a_prefix_loads_the_checkpoint(tmp_path):
    table = make_task_table(tmp_path, n=24, n_external=4, size=40)
    state, _ = _mae_state(seed=3)
    ckpt = _save_mae(tmp_path / "wrapped.pth", {f"encoder.{k}": v for k, v in state.items()})
    bare = _study(ckpt)
    assert _train(bare, table, tmp_path / "bare") == 1  # without the map, nothing is a ViT encoder key
    c = _study(ckpt, key_map={"encoder.": ""})
    assert _train(c, table, tmp_path / "out") == 0
    rep = json.loads((tmp_path / "out" / "model.json").read_text())["init_report"]
    assert rep["format"] == "retfound_mae" and not rep["partial"] and rep["loaded"] == rep["n_model_keys"] - 2
    assert rep["renamed"] == {"encoder.": ""}
    trained = load_file(str(tmp_path / "out" / "model.safetensors"))
    torch.testing.assert_close(trained["patch_embed.proj.weight"], state["patch_embed.proj.weight"], rtol=0, atol=1e-6)


def test_a_key_map_prefix_that_matches_nothing_fails_naming_it(tmp_path, capsys):
    table = make_task_table(tmp_path, n=24, n_external=4, size=40)
    state, _ = _mae_state()
    ckpt = _save_mae(tmp_path / "RETFound.pth", state)
    c = _study(ckpt, key_map={"encoder.": ""})  # a typo'd map: this checkpoint has no such prefix
    assert _train(c, table, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert f"checkpoint:{ckpt}: key_map prefix(es) ['encoder.'] match no key of the checkpoint" in err
    assert "blocks (" in err and "patch_embed (" in err and "decoder_embed (" in err  # what the keys do start with
    assert not (tmp_path / "out" / "model.json").exists()


# ----------------------------------------------------------------------------- config/fm-comparison.yaml

FM = REPO / "config" / "fm-comparison.yaml"
BUILTIN = ["random", "imagenet", "fundus", "imagenet+fundus"]
# where an init departs from its format's authors' model on purpose (the reason is in the
# config's comment on that init, which this test looks for)
DOCUMENTED = {("dinov2-b", "img_size"): "Why 224"}


@pytest.fixture(scope="module")
def fm():
    return fcfg.load(FM)


def test_fm_comparison_runs_every_paper_task_with_nine_inits_and_both_adaptations(fm):
    paper = fcfg.load(REPO / "config" / "paper.yaml")
    assert fm["tasks"].keys() == paper["tasks"].keys() and fm["datasets"] == paper["datasets"]
    assert fm["pretrain"] == paper["pretrain"] and fm["preprocess"] == paper["preprocess"]
    named = list(fm["inits"])
    assert len(named) == 5
    for name, task in fm["tasks"].items():
        ours = paper["tasks"][name]
        for key in ("type", "label", "classes", "labels", "datasets", "external", "split", "fractions"):
            assert task.get(key) == ours.get(key), (name, key)
        assert task["seeds"] == ours["seeds"][:1], name  # the five folds replicate each cell
        assert task["inits"] == BUILTIN + named, name
        assert task["adaptations"] == ["finetune", "linear"], name
        assert task["compare_to"] == "imagenet+fundus", name
    assert len(fcfg.runs(fm)) == 6 * 9 * 2 * 5 * 4 * 1


def test_fm_comparison_inits_are_whole_models_that_agree_with_their_formats(fm):
    text = FM.read_text()
    seen = set()
    for name, entry in fm["inits"].items():
        for key in ("checkpoint", "format", "arch", "img_size", "mean", "std", "head", "published", "licence"):
            assert key in entry, (name, key)
        assert entry["checkpoint"].startswith("weights/"), name  # local files, never a download
        assert entry["arch"] in timm.list_models(), name
        authors = formats.FORMATS[entry["format"]].model
        seen.add(entry["format"])
        for key in ("arch", "img_size", "head"):
            if key not in authors:
                continue
            theirs = authors[key].split(" ")[0] if isinstance(authors[key], str) else authors[key]
            if (name, key) in DOCUMENTED:
                assert entry[key] != theirs and DOCUMENTED[name, key] in text, (name, key)
            else:
                assert entry[key] == theirs, (name, key, entry[key], authors[key])
        if "mean" in authors:  # the authors' normalisation, resolved as the engine does
            want = input_norm(None, authors["mean"], authors["std"])
            assert input_norm(None, entry["mean"], entry["std"]) == want, name
    assert seen == {"paper_pickle", "flair", "retfound_mae", "retfound_green", "dinov2"}
    assert fm["inits"]["paper-released"]["trust_pickle"] is True
    vit = [n for n, e in fm["inits"].items() if e["arch"].startswith("vit_")]
    assert sorted(vit) == ["dinov2-b", "retfound-green", "retfound-mae"]
    for name in vit:  # RETFound's recipe (main_finetune.py defaults, README batch 16)
        r = fm["inits"][name]["recipe"]
        assert (r["lr"], r["batch_size"], r["layer_decay"], r["drop_path_rate"], r["weight_decay"], r["epochs"],
                r["warmup_epochs"]) == (5e-3 * 16 / 256, 16, 0.65, 0.2, 0.05, 50, 10), name
        assert DEFAULT_HPARAMS.keys() >= r.keys()


def _doc_examples() -> dict:
    """The ``inits:`` examples of docs/checkpoint-formats.md, section "Whole-model inits"."""
    import re

    text = (REPO / "docs" / "checkpoint-formats.md").read_text().split("## Whole-model inits", 1)[1]
    entries: dict = {}
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        entries.update(yaml.safe_load(block)["inits"])
    return entries


def test_the_documented_init_examples_validate_and_match_fm_comparison(fm):
    examples = _doc_examples()
    c = demo()
    c["inits"] = copy.deepcopy(examples)
    c["tasks"]["drgrade"]["inits"] = ["random", *examples]
    c = fcfg.validate(c)  # every documented entry is a valid one
    assert {e["format"] for e in c["inits"].values()} == set(formats.FORMATS) - {"safetensors", "timm"}
    for name, entry in examples.items():  # the same models as the study that uses them
        if name in fm["inits"]:
            for key in (*fcfg.MODEL_KEYS, "format", "trust_pickle"):
                assert entry.get(key, False) == fm["inits"][name].get(key, False), (name, key)
    recipe = examples["retfound-mae"]["recipe"]
    assert recipe.items() <= fm["inits"]["retfound-mae"]["recipe"].items()


def test_named_normalisations_are_timms_constants():
    import timm.data

    from fundusfm.train.config import NORMALISATIONS

    assert NORMALISATIONS["imagenet"] == (timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD)
    assert NORMALISATIONS["inception"] == (timm.data.IMAGENET_INCEPTION_MEAN, timm.data.IMAGENET_INCEPTION_STD)
    assert NORMALISATIONS["clip"] == (timm.data.OPENAI_CLIP_MEAN, timm.data.OPENAI_CLIP_STD)


def test_model_args_are_part_of_the_model_definition():
    from fundusfm.models.factory import build
    from fundusfm.train.config import resolve_hparams

    hp = resolve_hparams({"arch": "test_vit", "img_size": 64, "head": "timm", "model_args": {"global_pool": "avg"}})
    model = build(hp, 2)
    assert model.global_pool == "avg" and type(model.fc_norm).__name__ == "LayerNorm"
    assert build(resolve_hparams({"arch": "test_vit", "img_size": 64, "head": "timm"}), 2).global_pool == "token"
    with pytest.raises(ValueError, match=r"model_args \['img_size'\]: set by fundusfm itself"):
        build(dict(hp, model_args={"img_size": 32}), 2)
    with pytest.raises(ValueError, match="model_args must be an object"):
        resolve_hparams({"model_args": "avg"})
    assert "model_args" in fcfg.MODEL_KEYS
