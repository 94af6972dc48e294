"""The catalogue of bad inputs: each gives ONE line naming the culprit and what would be
accepted, a non-zero exit from the CLIs, and leaves existing files alone."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sandbox import build_trainer, load_config
from sandbox.errors import SandboxError
from tests.conftest import ROOT

CFG = ROOT / "configs" / "unet_dice.yaml"


def tiny(tmp_path):
    return [f"out_dir={tmp_path}", "name=tiny", "data.size=32", "data.num_train=8", "data.num_val=4",
            "data.batch_size=4", "model.width=4", "model.depth=2", "train.epochs=1", "train.log_every=1",
            "train.num_images=0", "track.wandb=disabled", "train.mixed_precision=no"]


# (id, overrides, regex the one-line message must match)
CONFIG_CASES = [
    ("unknown key", ["train.epochz=3"], r"unknown key 'train.epochz'; accepted keys under train: epochs"),
    ("unknown section", ["trainer.epochs=3"], r"unknown key 'trainer'.*accepted keys.*train"),
    ("wrong type int", ["train.epochs=three"], r"train.epochs: got 'three', expected an integer"),
    ("wrong type float", ["train.lr=fast"], r"train.lr: got 'fast', expected a number"),
    ("wrong type bool", ["data.cache=maybe"], r"data.cache: got 'maybe', expected true or false"),
    ("negative epochs", ["train.epochs=-1"], r"train.epochs: got -1, expected a positive number"),
    ("zero batch", ["data.batch_size=0"], r"data.batch_size: got 0, expected a positive number"),
    ("depth too large", ["model.depth=9"], r"model.depth: 9 .*data.size=128.*accepted depths"),
    ("depth not dividing", ["data.size=100", "model.depth=3"], r"model.depth: 3 halves data.size=100"),
    ("unknown model", ["model.name=resnet"], r"model.name: unknown model 'resnet'; accepted: .*unet"),
    ("unknown dataset", ["data.name=coco"], r"data.name: unknown dataset 'coco'; accepted: .*dancers"),
    ("unknown loss", ["loss.mask.diceloss=1.0"], r"loss.mask.diceloss: unknown loss; accepted: .*dice"),
    ("loss bad option", ["loss.mask.dice={weight: 1, smoothing: 2}"], r"loss.mask.dice: .*smoothing"),
    ("loss negative weight", ["loss.mask.dice=-1"], r"loss.mask.dice: got weight -1"),
    ("loss unknown target", ["loss.segmentation={dice: 1}"], r"loss.segmentation: dataset 'dancers' has no target"),
    ("literal choice", ["train.optimizer=lion"], r"train.optimizer: got 'lion', expected one of 'adam', 'adamw', 'sgd'"),
    ("scheduler choice", ["train.scheduler=linear"], r"train.scheduler: got 'linear', expected one of"),
    ("precision choice", ["train.mixed_precision=fp8"], r"train.mixed_precision: got 'fp8'"),
    ("widths length", ["model.widths=[8,16]"], r"model.widths: got 2 widths for model.depth=3"),
    ("dropout range", ["model.dropout=1.5"], r"model.dropout: got 1.5, expected a value in \[0, 1\)"),
    ("warmup range", ["train.warmup_frac=0"], r"train.warmup_frac: got 0.0, expected a value in \(0, 1\)"),
    ("monitor", ["train.monitor=dice"], r"train.monitor: got 'dice', expected a logged metric"),
    ("fractions", ["data.val_fraction=0.6", "data.test_fraction=0.5"], r"data.val_fraction \+ data.test_fraction"),
    ("train fraction", ["data.train_fraction=0"], r"data.train_fraction: got 0.0, expected a fraction in \(0, 1\]"),
    ("mask threshold over 1", ["data.mask_threshold=5"], r"data.mask_threshold: got 5.0, expected a fraction in \[0, 1\)"),
    ("mask threshold of 1", ["data.mask_threshold=1"], r"data.mask_threshold: got 1.0, expected a fraction in \[0, 1\)"),
    ("mask resize choice", ["data.mask_resize=crop"], r"data.mask_resize: got 'crop', expected one of 'error', 'stretch'"),
    ("simpleconv resize", ["model.name=simpleconv", "model.upsample=bilinear"], r"model.upsample: simpleconv never resizes"),
    ("group norm widths", ["model.norm=group", "model.width=12"], r"model.norm: group norm needs widths divisible by 8"),
    ("resnet weights missing", ["model.encoder=resnet18", "model.weights=/nope/r18.pth"], r"/nope/r18.pth.*not found"),
    ("balance target", ["loss_balance={scale: depth, to: mask}"], r"loss_balance.scale: got 'depth', expected a loss target: mask"),
    ("override syntax", ["train.epochs"], r"override 'train.epochs' is not of the form key.path=value"),
    ("run name escapes", ["name=../elsewhere"], r"name: got '../elsewhere', expected a non-empty relative run name"),
]


@pytest.mark.parametrize("overrides,pattern", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_config_errors_name_the_key(overrides, pattern):
    with pytest.raises(SandboxError) as err:
        load_config(CFG, overrides)
    msg = str(err.value)
    assert "\n" not in msg, msg  # one line
    assert str(CFG) in msg or msg.startswith("override"), msg  # naming the file (overrides are not in it)
    assert __import__("re").search(pattern, msg), msg


def test_config_file_errors(tmp_path):
    with pytest.raises(SandboxError, match=r"config file '.*nope.yaml' not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 3\nmodel: [\n")
    with pytest.raises(SandboxError, match=r"bad.yaml.*line \d"):
        load_config(bad)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(SandboxError, match=r"list.yaml.*expected a mapping"):
        load_config(notmap)


# ---------------------------------------------------------------------------- data
def _folder(root, n=6, masks=True, size=(24, 20)):
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg")
        if masks:
            m = np.zeros((size[1], size[0]), np.uint8)
            m[5:15, 5:15] = 255
            Image.fromarray(m).save(root / "masks" / f"{i}.png")
    return root


def _folder_cfg(tmp_path, root, *extra):
    return tiny(tmp_path) + ["data.name=folder", f"data.root={root}", "data.val_fraction=0.34",
                             "data.test_fraction=0", *extra]


def _train(overrides):
    build_trainer(load_config(CFG, overrides)).fit()


def test_missing_root(tmp_path):
    with pytest.raises(SandboxError, match=r"data.root '.*nowhere': no such folder; expected a folder with images/"):
        _train(_folder_cfg(tmp_path, tmp_path / "nowhere"))


def test_wrong_subfolder_lists_what_exists(tmp_path):
    root = _folder(tmp_path / "ds")
    with pytest.raises(SandboxError, match=r"data.mask_dir='Ground_Truth'.*sub-folders of .*: images, masks"):
        _train(_folder_cfg(tmp_path, root, "data.mask_dir=Ground_Truth"))


def test_empty_folder(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "images" / ".DS_Store").write_bytes(b"junk")
    with pytest.raises(SandboxError, match=r"images: no image files"):
        _train(_folder_cfg(tmp_path, root))


def test_images_without_masks_are_counted_and_named(tmp_path):
    root = _folder(tmp_path / "ds")
    (root / "masks" / "3.png").unlink()
    (root / "masks" / "4.png").unlink()
    with pytest.raises(SandboxError, match=r"2 image\(s\) have no mask in .*masks \(3.jpg, 4.jpg\)"):
        _train(_folder_cfg(tmp_path, root))


def test_truncated_and_empty_images_are_named(tmp_path):
    root = _folder(tmp_path / "ds")
    data = (root / "images" / "1.jpg").read_bytes()
    (root / "images" / "1.jpg").write_bytes(data[: len(data) // 3])
    (root / "images" / "2.jpg").write_bytes(b"")
    from sandbox.build import build_data
    ds = build_data(load_config(CFG, _folder_cfg(tmp_path, root)), ("train", "val"))
    with pytest.raises(SandboxError, match=r"2.jpg: empty file \(0 bytes\); expected an image file"):
        from sandbox.data.folders import open_image
        open_image(root / "images" / "2.jpg")
    with pytest.raises(SandboxError, match=r"unreadable file\(s\) under"):
        for split in ds.values():
            split.check()


def test_split_file_naming_a_missing_image(tmp_path):
    root = _folder(tmp_path / "ds")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.csv").write_text("stem,image,mask\n0,images/0.jpg,masks/0.png\n9,images/9.jpg,masks/9.png\n")
    (splits / "val.csv").write_text("stem,image,mask\n1,images/1.jpg,masks/1.png\n")
    (splits / "test.csv").write_text("stem,image,mask\n")
    with pytest.raises(SandboxError, match=r"train.csv: line 3 names 'images/9.jpg', which does not exist"):
        _train(_folder_cfg(tmp_path, root, f"data.splits={splits}"))


# ---------------------------------------------------------------------------- checkpoints and run dirs
def test_resume_missing_path(tmp_path):
    with pytest.raises(SandboxError, match=r"resume: '.*ghost' does not exist; expected a run directory"):
        _train(tiny(tmp_path) + [f"train.resume={tmp_path / 'ghost'}"])


def test_resume_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(SandboxError, match=r"is neither a run directory .* nor a checkpoint directory"):
        _train(tiny(tmp_path) + [f"train.resume={tmp_path / 'plain'}"])


def test_truncated_only_checkpoint(tmp_path):
    _train(tiny(tmp_path))
    ck = tmp_path / "tiny" / "checkpoints"
    for which in ("last", "best"):
        w = next((ck / which).glob("model*.safetensors"))
        w.write_bytes(w.read_bytes()[:64])
    with pytest.raises(SandboxError, match=r"checkpoint '.*' could not be loaded"):
        _train(tiny(tmp_path) + [f"train.resume={ck / 'last'}"])


def test_checkpoint_with_missing_files(tmp_path):
    _train(tiny(tmp_path))
    last = tmp_path / "tiny" / "checkpoints" / "last"
    next(last.glob("optimizer*.bin")).unlink()
    with pytest.raises(SandboxError, match=r"checkpoint '.*last' is incomplete: missing optimizer"):
        _train(tiny(tmp_path) + [f"train.resume={last}"])


def test_checkpoint_from_another_model(tmp_path):
    _train(tiny(tmp_path))
    with pytest.raises(SandboxError, match=r"different model \(model.depth: 2 there, 3 here\)"):
        _train(tiny(tmp_path) + ["model.depth=3", f"train.resume={tmp_path / 'tiny'}"])


def test_existing_run_without_resume_is_untouched(tmp_path):
    _train(tiny(tmp_path))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "tiny").rglob("*") if p.is_file()}
    with pytest.raises(SandboxError, match=r"already holds a run; continue it with train.resume="):
        _train(tiny(tmp_path))
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "tiny").rglob("*") if p.is_file()}
    assert before == after


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_output_dir_not_writable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(SandboxError, match=r"cannot (write|create) the run directory"):
            _train(tiny(locked))
    finally:
        locked.chmod(0o700)


def test_output_dir_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SandboxError, match=r"run directory '.*afile/tiny'"):
        _train(tiny(tmp_path / "afile"))


# ---------------------------------------------------------------------------- through the CLI
@pytest.mark.parametrize("args,pattern", [
    (["train.epochz=3"], "unknown key 'train.epochz'"),
    (["model.name=resnet"], "unknown model 'resnet'"),
    (["train.resume=/definitely/not/here"], "does not exist"),
])
def test_cli_exits_nonzero_with_one_line(tmp_path, args, pattern):
    done = subprocess.run([sys.executable, str(ROOT / "sandbox" / "train.py"), "--config", str(CFG),
                           f"out_dir={tmp_path}", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())  # nothing written
