"""Frozen features (fundusfm embed): the feature file, the init's model built as a fine-tune
builds it, the head's input as the feature, user mode on a training output and a release."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from test_train_helpers import BINARY_TASK, make_task_table  # noqa: E402

from fundusfm.cli import main  # noqa: E402
from fundusfm.train.config import resolve_hparams  # noqa: E402
from fundusfm.train.data import load_image  # noqa: E402
from fundusfm.train.embed import build_init_model, embed_table, pooled_features  # noqa: E402
from fundusfm.train.features import FeaturesError, features_for, read_features, write_features  # noqa: E402

torch.set_num_threads(1)
HP = {"arch": "resnet10t", "head": "timm", "img_size": 32}


def _normalised(paths, size, mean, std) -> torch.Tensor:
    x = torch.stack([load_image(p, size) for p in paths]).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_feature_file_round_trip_and_its_errors(tmp_path):
    images = [f"img/{i}.png" for i in range(5)]
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    path = tmp_path / "f.parquet"
    write_features(path, images, x, {"model": {"arch": "a"}, "init": {"name": "random"}})
    got_images, got, meta = read_features(path)
    assert got_images == images and got.dtype == np.float32
    np.testing.assert_array_equal(got, x)
    assert meta["feature_dim"] == 3 and meta["n_images"] == 5 and meta["model"] == {"arch": "a"}
    import pyarrow.parquet as pq

    assert pq.read_schema(str(path)).names == ["image", "f0000", "f0001", "f0002"]
    np.testing.assert_array_equal(features_for(["img/3.png", "img/0.png"], path), x[[3, 0]])
    with pytest.raises(FeaturesError, match=r"f\.parquet: no features for image 'img/9\.png' of t\.csv"):
        features_for(["img/0.png", "img/9.png"], path, what="t.csv")
    (tmp_path / "not.parquet").write_text("image,f0000\n")
    with pytest.raises(FeaturesError, match=r"not\.parquet: not a Parquet file"):
        read_features(tmp_path / "not.parquet")
    pd.DataFrame({"image": ["a"], "f0000": [1.0]}).to_parquet(tmp_path / "plain.parquet")
    with pytest.raises(FeaturesError, match=r"plain\.parquet: not a fundusfm feature file"):
        read_features(tmp_path / "plain.parquet")
    with pytest.raises(FeaturesError, match=r"absent\.parquet not found"):
        read_features(tmp_path / "absent.parquet")
    with pytest.raises(ValueError, match="listed twice"):
        write_features(tmp_path / "dup.parquet", ["a", "a"], x[:2], {})


def test_features_are_the_heads_input_read_as_training_reads_images(tmp_path):
    table = make_task_table(tmp_path, n=12, n_external=2)
    hp = resolve_hparams(HP)
    meta = embed_table(table, tmp_path / "f.parquet", init="random", hp=hp, num_outputs=2, seed=3, batch_size=5)
    images, x, fmeta = read_features(tmp_path / "f.parquet")
    rows = pd.read_csv(table)
    assert images == rows["image"].tolist() and meta["n_images"] == 14  # every used row, table order
    assert fmeta["model"] == {"arch": "resnet10t", "head": "timm", "img_size": 32,
                              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert fmeta["init"]["spec"] == "random" and fmeta["seed"] == 3 and fmeta["device"] == "cpu"
    assert fmeta["images_per_s"] > 0 and fmeta["wall_s"] > 0 and "loaded 0/" in fmeta["init"]["summary"]
    # reference: the seeded model, eval mode, images through load_image (training's reader)
    model, _, definition = build_init_model(hp, 2, "random", seed=3)
    with torch.no_grad():
        ref = pooled_features(model, _normalised(images, 32, definition["mean"], definition["std"])).numpy()
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-5)
    # reproducible for a seed, different for another
    embed_table(table, tmp_path / "g.parquet", init="random", hp=hp, num_outputs=2, seed=3)
    np.testing.assert_array_equal(read_features(tmp_path / "g.parquet")[1], x)
    embed_table(table, tmp_path / "h.parquet", init="random", hp=hp, num_outputs=2, seed=4)
    assert not np.allclose(read_features(tmp_path / "h.parquet")[1], x)
    # parts: the development rows, or one external dataset
    embed_table(table, tmp_path / "e.parquet", init="random", hp=hp, num_outputs=2, seed=3, part="external_ext")
    ext_images, ext_x, _ = read_features(tmp_path / "e.parquet")
    assert ext_images == rows.loc[rows["dataset"] == "ext", "image"].tolist()
    np.testing.assert_array_equal(ext_x, x[-2:])


def test_the_paper_head_gives_backbone_width_features(tmp_path):
    table = make_task_table(tmp_path, n=6, n_external=0)
    feats = {}
    for head in ("paper", "timm"):
        hp = resolve_hparams({"arch": "test_resnet", "head": head, "img_size": 32})
        embed_table(table, tmp_path / f"{head}.parquet", init="random", hp=hp, num_outputs=2, seed=0)
        feats[head] = read_features(tmp_path / f"{head}.parquet")[1]
    assert feats["paper"].shape == (6, 96)  # test_resnet's 96-wide pooled output, not the 512 hidden layer
    # the head is built after the backbone from the same seed: the backbone, hence the features, are equal
    np.testing.assert_array_equal(feats["paper"], feats["timm"])


def test_retfound_mae_checkpoint_embeds_into_a_tiny_vit_at_another_size(tmp_path):
    # a RETFound MAE pretraining file ({"model": encoder + decoder keys}) of test_vit at 64 px
    enc = timm.create_model("test_vit", img_size=64, num_classes=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in enc.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.2 + (1.0 if t.ndim == 1 else 0.0))
    state = dict(enc.state_dict())
    state["mask_token"] = torch.randn(1, 1, 16, generator=g)
    state["decoder_embed.weight"] = torch.randn(16, enc.embed_dim, generator=g)
    state["decoder_pred.weight"] = torch.randn(16 * 16 * 3, 16, generator=g)
    ckpt = tmp_path / "RETFound_cfp_weights.pth"
    torch.save({"model": state, "epoch": 799}, ckpt)

    table = make_task_table(tmp_path, n=6, n_external=0)
    out = tmp_path / "vit.parquet"
    hp = json.dumps({"arch": "test_vit", "head": "timm", "img_size": 48, "mean": "imagenet", "std": "imagenet"})
    rc = main(["embed", "--table", str(table), "--init", f"checkpoint:{ckpt}", "--init-name", "retfound",
               "--hparams-json", hp, "--checkpoint-format", "retfound_mae", "--task-json", BINARY_TASK,
               "--seed", "0", "--batch-size", "4", "--gpus", "0", "--out", str(out)])
    assert rc == 0
    images, x, meta = read_features(out)
    assert x.shape == (6, 64) and meta["init"]["name"] == "retfound"
    assert meta["init"]["report"]["format"] == "retfound_mae" and not meta["init"]["report"]["partial"]
    assert "decoder_embed.weight" in meta["init"]["report"]["dropped"]
    # reference: timm's ViT at 48 px with the encoder's weights, position grid 4x4 -> 3x3
    # resampled as RETFound's interpolate_pos_embed does (bicubic, class token kept)
    ref = timm.create_model("test_vit", img_size=48, num_classes=0).eval()
    sd = {k: v for k, v in enc.state_dict().items()}
    pos = sd["pos_embed"]
    grid = pos[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(3, 3), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    sd["pos_embed"] = torch.cat([pos[:, :1], grid], dim=1)
    ref.load_state_dict(sd)
    with torch.no_grad():
        want = pooled_features(ref, _normalised(images, 48, meta["model"]["mean"], meta["model"]["std"])).numpy()
    np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-4)


def test_user_mode_embeds_a_training_output_and_a_release(tmp_path):
    from test_release import _fundus_jpeg, make_release, make_run

    from fundusfm.models import load_trained
    from fundusfm.release import load_model

    run = make_run(tmp_path, "paper")
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    table = make_task_table(tmp_path / "t", n=4, n_external=0)
    for i, p in enumerate(pd.read_csv(table)["image"]):
        target = folder / ("sub" if i % 2 else "") / Path(p).name
        target.write_bytes(Path(p).read_bytes())
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "u.parquet"
    assert main(["embed", "--model", str(run), str(folder), "--out", str(out), "--gpus", "0"]) == 0
    images, x, meta = read_features(out)
    assert len(images) == 4 and all(p.endswith(".png") for p in images) and images == sorted(images)
    assert x.shape[1] == 512 and meta["source"]["kind"] == "training output"  # resnet10t's pooled width
    model, mm = load_trained(run)
    with torch.no_grad():
        want = pooled_features(model, _normalised(images, mm["img_size"], mm["mean"], mm["std"])).numpy()
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)

    (tmp_path / "rel").mkdir()
    release = make_release(tmp_path / "rel", "paper")
    photos = tmp_path / "photos"
    photos.mkdir()
    _fundus_jpeg(photos / "a.jpg", 11)
    _fundus_jpeg(photos / "b.jpg", 12)
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).save(photos / "c_astronaut.jpg", quality=92)
    out = tmp_path / "r.parquet"
    assert main(["embed", "--model", str(release), str(photos), "--out", str(out), "--gpus", "0"]) == 0
    images, x, meta = read_features(out)
    assert [Path(p).name for p in images] == ["a.jpg", "b.jpg"]  # the astronaut has no fundus: skipped
    assert [Path(s["image"]).name for s in meta["skipped"]] == ["c_astronaut.jpg"]
    released = load_model(release)
    xs = torch.stack([released.preprocess(p)[1] for p in images]).float() / 255
    m, s = (torch.tensor(released.meta[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        want = pooled_features(released.model, (xs - m) / s).numpy()
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)


def test_embed_errors_name_the_model_the_folder_and_the_row(tmp_path, capsys):
    out = str(tmp_path / "f.parquet")
    assert main(["embed", "--model", str(tmp_path / "nowhere"), "x.png", "--out", out]) == 1
    assert "model folder" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text("{}")
    (run / "model.safetensors").write_bytes(b"")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["embed", "--model", str(run), str(empty), "--out", out]) == 1
    assert f"no images found in ['{empty}']" in capsys.readouterr().err
    assert main(["embed", "--model", str(tmp_path), str(empty), "--out", out]) == 1
    assert "neither a training output" in capsys.readouterr().err
    table = make_task_table(tmp_path / "t", n=4, n_external=0)
    df = pd.read_csv(table)
    gone = df["image"].iloc[2]
    Path(gone).unlink()
    args = ["embed", "--table", str(table), "--init", "random", "--task-json", BINARY_TASK, "--hparams-json",
            json.dumps(HP), "--gpus", "0", "--out", out]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{table}: row 4 image {gone!r} not found" in err
    assert main(args + ["--model", str(run)]) == 2
    assert main(["embed", "--table", str(table), "--out", out]) == 2
    assert not Path(out).exists()
