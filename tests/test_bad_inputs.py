"""The catalogue of bad inputs: each gives ONE line naming the culprit and what would be
accepted, a non-zero exit from the CLIs, and leaves existing files alone."""
import contextlib
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sandbox import build_trainer, load_config
from sandbox.config import Config
from sandbox.errors import SandboxError
from tests.conftest import ROOT, run_command

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
    ("mask threshold over 1", ["data.mask_threshold=5"], r"data.mask_threshold: got 5.0, expected a value in \[0, 1\)"),
    ("mask threshold of 1", ["data.mask_threshold=1"], r"data.mask_threshold: got 1.0, expected a value in \[0, 1\)"),
    ("mask resize choice", ["data.mask_resize=crop"], r"data.mask_resize: got 'crop', expected one of 'error', 'stretch'"),
    ("simpleconv resize", ["model.name=simpleconv", "model.upsample=bilinear"], r"model.upsample: simpleconv never resizes"),
    ("group norm widths", ["model.norm=group", "model.width=12"], r"model.norm: group norm needs widths divisible by 8"),
    ("resnet weights missing", ["model.encoder=resnet18", "model.weights=/nope/r18.pth"], r"/nope/r18.pth.*not found"),
    ("balance target", ["loss_balance={scale: depth, to: mask}"], r"loss_balance.scale: got 'depth', expected a loss target: mask"),
    ("override syntax", ["train.epochs"], r"override 'train.epochs' is not of the form key.path=value"),
    ("run name escapes", ["name=../elsewhere"], r"name: got '../elsewhere', expected a non-empty relative run name"),
    # not finite: refused where floats are coerced (every float key, and the Any values of losses and augmentations)
    ("nan lr", ["train.lr=.nan"], r"train.lr: got nan, expected a finite number"),
    ("inf weight decay", ["train.weight_decay=.inf"], r"train.weight_decay: got inf, expected a finite number"),
    ("nan optional float", ["train.clip=.nan"], r"train.clip: got nan, expected a finite number"),
    ("nan loss weight", ["loss.mask.dice=.nan"], r"loss.mask.dice: got nan, expected a finite number"),
    ("inf loss option", ["loss.mask.bce={weight: 1, pos_weight: .inf}"],
     r"loss.mask.bce.pos_weight: got inf, expected a finite number"),
    ("int beyond float", ["train.lr=1" + "0" * 400], r"train.lr: got 10+\.\.\.0+, expected a finite number"),
    ("int beyond int64", ["train.epochs=" + "9" * 30], r"train.epochs: got 9+, expected an integer in \[-2\*\*63"),
    # ranges (schema.RANGES): the key and the accepted interval
    ("seed negative", ["seed=-1"], r"seed: got -1, expected an integer in \[0, 4294967295\]"),
    ("seed beyond 32 bits", [f"seed={2**32}"], r"seed: got 4294967296, expected an integer in \[0, 4294967295\]"),
    ("size too large", ["data.size=100000"], r"data.size: got 100000, expected an integer in \[8, 4096\]"),
    ("size too small", ["data.size=4", "model.depth=1"], r"data.size: got 4, expected an integer in \[8, 4096\]"),
    ("num_train bound", ["data.num_train=1000000000"],
     r"data.num_train: got 1000000000, expected an integer in \[1, 1000000\]"),
    ("num_val bound", ["data.num_val=2000000"], r"data.num_val: got 2000000, expected an integer in \[0, 1000000\]"),
    ("width too large", ["model.width=100000"], r"model.width: got 100000, expected an integer in \[1, 4096\]"),
    ("widths element too large", ["model.widths=[8, 16, 32, 1000000]"],
     r"model.widths: got \[8, 16, 32, 1000000\], expected a list of integers in \[1, 4096\]"),
    ("depth too large", ["model.depth=40"], r"model.depth: got 40, expected an integer in \[0, 12\]"),
    ("batch too large", ["data.batch_size=10000000"], r"data.batch_size: got 10000000, expected an integer in \[1, 65536\]"),
    ("threads too many", ["train.threads=100000"], r"train.threads: got 100000, expected an integer in \[0, 1024\]"),
    ("latent too large", ["model.name=vae", "data.name=attractors", "loss={image: {mse: 1}}", "model.latent_dim=1000000000"],
     r"model.latent_dim: got 1000000000, expected an integer in \[1, 65536\]"),
    ("momentum negative", ["train.momentum=-0.5"], r"train.momentum: got -0.5, expected a value in \[0, 1\)"),
    ("momentum one", ["train.momentum=1"], r"train.momentum: got 1.0, expected a value in \[0, 1\)"),
    ("sgd without momentum", ["train.optimizer=sgd", "train.momentum=0"],
     r"train.momentum: got 0.0; sgd takes Nesterov"),
    ("step_epochs zero", ["train.step_epochs=0"], r"train.step_epochs: got 0, expected an integer in \[1, inf\)"),
    ("keep_last_n negative", ["train.keep_last_n=-1"], r"train.keep_last_n: got -1, expected an integer in \[0, inf\)"),
    ("checkpoint_every negative", ["train.checkpoint_every=-1"],
     r"train.checkpoint_every: got -1, expected an integer in \[0, inf\)"),
    ("plateau gamma", ["train.gamma=1.5"], r"train.gamma: got 1.5, expected a value in \(0, 1\)"),
    ("mask threshold", ["data.mask_threshold=2"], r"data.mask_threshold: got 2.0, expected a value in \[0, 1\)"),
    ("schedule size", ["data.size_schedule={0: 32, 2: 100000}"], r"data.size_schedule: got \{2: 100000\}.*\[8, 4096\]"),
    ("run name is out_dir", ["name=."], r"name: got '.', expected a non-empty relative run name .*not '.'"),
    ("run name ./", ["name=./"], r"name: got './', expected a non-empty relative run name"),
    ("run name control char", ['name="a\\nb"'], r"name: got 'a\\nb', expected .*no control characters"),
    # wrong type inside a list or a mapping: the element is named, under Optional too
    ("list element", ["model.widths=[8, 16, x, 32]"], r"model.widths\[2\]: got 'x', expected an integer"),
    ("mapping value", ["data.size_schedule={0: 32, 2: x}"], r"data.size_schedule.2: got 'x', expected an integer"),
    ("mapping key not int", ["data.size_schedule={2.5: 32}"], r"data.size_schedule: key 2.5 is not an integer"),
    ("optional section key", ["loss_balance={scale: depth, to: mask, strength: 2}"],
     r"unknown key 'loss_balance.strength'; accepted keys under loss_balance: scale, to, min, max"),
    ("optional mapping value", ["loss={mask: {dice: 1}, depth: l1}"], r"loss.depth: got 'l1', expected a mapping"),
    # a value embeds at most ~200 characters of itself in a message
    ("long string value", ["train.optimizer=" + "a" * 5000], r"train.optimizer: got 'a+\.\.\.a+', expected one of"),
    ("long list value", ["data.size_schedule=[" + ", ".join(["1"] * 5000) + "]"],
     r"data.size_schedule: got \[1, 1, .*\.\.\.\], expected a dict or null"),
    ("long unknown model", ["model.name=" + "m" * 5000], r"model.name: unknown model 'm+\.\.\.m+'; accepted"),
    ("long key", ["loss={" + "t" * 1000 + ": {dice: 1}}"], r"loss.t+\.\.\.: dataset 'dancers' has no target"),
]


@pytest.mark.parametrize("overrides,pattern", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_config_errors_name_the_key(overrides, pattern):
    with pytest.raises(SandboxError) as err:
        load_config(CFG, overrides)
    msg = str(err.value)
    assert "\n" not in msg, msg[:2000]  # one line
    assert str(CFG) in msg or msg.startswith("override"), msg[:2000]  # naming the file (overrides are not in it)
    assert __import__("re").search(pattern, msg), msg[:2000]
    assert len(msg) < 600, f"{len(msg)} characters: {msg[:2000]}"  # no value embedded whole


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


def _bomb(levels: int, width: int = 10) -> str:
    """Billion laughs: ``width ** levels`` copies of one string once the aliases are expanded, a few
    hundred bytes of YAML (PyYAML shares the anchored node, so only what walks the value pays)."""
    items = ['&x0 "lol"'] + [f"&x{i} [{', '.join([f'*x{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "model:\n  widths:\n" + "".join(f"    - {item}\n" for item in items)  # under a typed key


@contextlib.contextmanager
def _memory_cap(extra: int = 2 << 30):
    """Cap this process's address space at its present size + ``extra`` while a test loads something
    that would grow without bound if its guard were gone: a MemoryError then, not a dead machine."""
    try:
        import resource
        size = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError):  # not Linux: no cap
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (min(size + extra, hard) if hard > 0 else size + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _one_line_naming(exc, path) -> str:
    msg = str(exc.value)
    # short apart from the path itself (a test's tmp path is longer under pytest-xdist: popen-gw0/)
    assert "\n" not in msg and len(msg.replace(str(path), "<path>")) < 400, msg[:2000]
    assert str(path) in msg, msg[:2000]
    return msg


def test_alias_bomb_is_refused_while_parsing(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb(12))  # 10**12 values once expanded
    start = time.perf_counter()
    with _memory_cap(), pytest.raises(SandboxError) as err:
        load_config(bomb)
    assert time.perf_counter() - start < 3
    msg = _one_line_naming(err, bomb)
    assert re.search(r"line \d+: over 10,000 values with its aliases \(\*name\) expanded", msg), msg


def test_smaller_alias_bomb_gives_a_short_line(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb(6))  # 10**6 values: the repr of the value was a 6 MB "one line"
    with pytest.raises(SandboxError) as err:
        load_config(bomb)
    assert "aliases (*name) expanded" in _one_line_naming(err, bomb)
    with pytest.raises(SandboxError, match=r"override 'model.widths=.*': line 1: over 10,000 values"):
        load_config(CFG, ["model.widths=[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
                          "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], [*d,*d]]"])


@pytest.mark.parametrize("text,pattern", [
    ("data: &a {augment: [*a]}\n", r"line 1: alias \*a inside its own anchor &a \(a value of infinite size\)"),
    ("data: {augment: " + "[" * 1000 + "]" * 1000 + "}\n", r"line 1: lists and mappings nested more than 64 deep"),
    ("name: 2024-13-01\n", r"a value cannot be read \(month must be in 1..12\)"),
    ("seed: " + "9" * 5000 + "\n", r"a value cannot be read \(Exceeds the limit \(4300 digits\)"),
], ids=["recursive alias", "nested too deep", "impossible date", "int of 5000 digits"])
def test_unbuildable_yaml_is_one_line(tmp_path, text, pattern):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(SandboxError) as err:
        load_config(path)
    assert re.search(pattern, _one_line_naming(err, path)), str(err.value)[:2000]


def test_config_file_too_big(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    with pytest.raises(SandboxError) as err:
        load_config(big)
    assert "2.0 MiB; a config file is at most 1 MiB" in _one_line_naming(err, big)


def test_config_file_not_utf8(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SandboxError) as err:
        load_config(latin)
    msg = _one_line_naming(err, latin)
    assert "not UTF-8 text (byte 0xe9 at offset 9); expected a UTF-8 encoded YAML file" in msg, msg


def test_config_path_is_a_directory(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    for name in ("b.yaml", "a.yaml", "c.yml", "notes.txt"):
        (folder / name).write_text("{}")
    with pytest.raises(SandboxError) as err:
        load_config(folder)
    msg = _one_line_naming(err, folder)
    assert f"is a directory; expected a YAML file, e.g. {folder / 'a.yaml'}, {folder / 'b.yaml'}, " \
           f"{folder / 'c.yml'}" in msg and "notes" not in msg, msg


@pytest.mark.parametrize("text", ["", "# all defaults\n"], ids=["empty", "comments only"])
def test_empty_config_file_warns_and_uses_the_defaults(tmp_path, caplog, text):
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    with caplog.at_level(logging.WARNING, logger="sandbox"):
        cfg = load_config(empty)
    warned = [r.getMessage() for r in caplog.records if r.name == "sandbox"]
    assert any(f"{empty}: empty config file; using the defaults" in m for m in warned), warned
    assert cfg.model.name == Config().model.name and cfg.train.lr == Config().train.lr


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
    with pytest.raises(SandboxError, match=r"already holds a run \(checkpoints/last at step \d+\); continue it with: python sandbox/train.py --resume "):
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
def _cli_one_error_line(tmp_path, config, *args) -> str:
    out = tmp_path / "out"
    out.mkdir()
    done = run_command("train", "--config", str(config), f"out_dir={out}", *args)  # a traceback would raise here
    assert done.code == 2, done.err[-2000:]
    lines = done.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) < 600, done.err[-2000:]
    assert not any(out.iterdir())  # nothing written
    return lines[0]


@pytest.mark.parametrize("args,pattern", [
    (["train.epochz=3"], "unknown key 'train.epochz'"),
    (["model.name=resnet"], "unknown model 'resnet'"),
    (["train.resume=/definitely/not/here"], "does not exist"),
    (["data.size=100000"], "data.size: got 100000, expected an integer in [8, 4096]"),
    (["train.lr=.nan"], "train.lr: got nan, expected a finite number"),
])
def test_cli_exits_nonzero_with_one_line(tmp_path, args, pattern):
    line = _cli_one_error_line(tmp_path, CFG, *args)
    assert pattern in line, line


@pytest.mark.parametrize("make,pattern", [
    (lambda p: p.write_text(_bomb(6)) and p, "over 10,000 values with its aliases (*name) expanded"),
    (lambda p: p.write_bytes("name: caf\xe9\n".encode("latin-1")) and p, "not UTF-8 text"),
    (lambda p: p.mkdir() or (p / "a.yaml").write_text("{}") and p, "is a directory; expected a YAML file, e.g. "),
], ids=["alias bomb", "not utf-8", "directory"])
def test_cli_bad_config_file_is_one_line(tmp_path, make, pattern):
    config = make(tmp_path / "cfg.yaml")
    line = _cli_one_error_line(tmp_path, config)
    assert pattern in line and str(config) in line, line


def test_a_file_size_limit_during_a_save_is_one_line_and_keeps_the_checkpoints(tmp_path):
    """A disk that refuses a write mid-run (here RLIMIT_FSIZE: a checkpoint file over 20 kB): one
    `error:` line naming the file and the cause, no traceback, and the last checkpoint still resumes."""
    import resource

    _train(tiny(tmp_path))
    last = tmp_path / "tiny" / "checkpoints" / "last"
    before = {p.name: p.read_bytes() for p in last.iterdir()}

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    proc = subprocess.run([sys.executable, "sandbox/train.py", "--resume", str(tmp_path / "tiny"), "train.epochs=2",
                           "train.scheduler=none"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    err = [line for line in proc.stderr.splitlines() if line.startswith(("error", "Traceback"))]
    assert proc.returncode == 2 and len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "could not write checkpoints/" in err[0] and "File too large" in err[0] and "--resume" in err[0], err
    assert {p.name: p.read_bytes() for p in last.iterdir()} == before  # last untouched


def test_a_bad_image_read_by_a_loader_worker_is_one_line(tmp_path):
    """With data.num_workers=1 the error happens in a worker process; the user still gets one line."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(8):
        Image.fromarray(np.full((32, 32, 3), 40 * (i % 5), np.uint8)).save(root / "images" / f"{i}.png")
        m = np.zeros((32, 32), np.uint8)
        m[8:24, 8:24] = 255
        Image.fromarray(m).save(root / "masks" / f"{i}.png")
    first = run_command("train", "--config", str(CFG), *tiny(tmp_path), "data.name=folder", f"data.root={root}",
                        "data.num_workers=1", "data.cache=false", "data.val_fraction=0.25", "data.test_fraction=0.25")
    assert first.code == 0, first.err[-1500:]  # readable data trains (the broken run below: a real process's stderr)
    for f in (root / "images").glob("*.png"):
        f.write_bytes(b"not a png")  # every image torn after the split was written: a worker meets one
    (tmp_path / "tiny").rename(tmp_path / "first")
    proc = subprocess.run([sys.executable, "sandbox/train.py", "--config", str(CFG), *tiny(tmp_path),
                           "data.name=folder", f"data.root={root}", "data.num_workers=1", "data.cache=false",
                           "data.val_fraction=0.25", "data.test_fraction=0.25"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    err = [line for line in proc.stderr.splitlines() if line.strip() and "%|" not in line]
    assert proc.returncode == 2 and err[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "Original Traceback" not in err[-1] and ".png" in err[-1], err[-1]
