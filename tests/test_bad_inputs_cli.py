"""Bad inputs, second round (issue 26): duplicate YAML keys, unbounded command-line numbers, error lines
of megabytes, thousands of stages, run names the filesystem or the terminal cannot take, and YAML 1.1
integers that read as other numbers than they look. Each is ONE line naming the culprit and what
would be accepted (exit 2 from a command), never a silent wrong value, a hang or a traceback."""
import ast
import json
import re
import time

import pytest

from sandbox import build_trainer, load_config
from sandbox.cli import MAX_LINE, cli_entry, one_line
from sandbox.config.yamlfile import load_yaml_text, read_yaml
from sandbox.errors import ConfigError, SandboxError
from tests.conftest import ROOT, cli, train_cli

CFG = ROOT / "configs" / "unet_dice.yaml"
TINY = ["data.size=32", "data.num_train=8", "data.num_val=4", "data.num_test=4", "data.batch_size=4", "model.width=4",
        "model.depth=2", "train.epochs=1", "train.num_images=0", "track.wandb=disabled", "train.mixed_precision=no"]


def one_error(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 600, msg[:2000]
    return msg


# ---------------------------------------------------------------------------- duplicate keys
@pytest.mark.parametrize("text,where,lines", [
    ("train:\n  epochs: 1\nmodel:\n  width: 4\ntrain:\n  lr: 0.01\n", "key train", "lines 1 and 5"),
    ("train:\n  epochs: 1\n  lr: 0.01\n  epochs: 3\n", "key train.epochs", "lines 2 and 4"),
    ("stages:\n  - {name: b, name: c}\n", "key stages[0].name", "both on line 2, columns 6 and 15"),
    ("loss:\n  mask: {dice: 1.0}\n  mask: {bce: 1.0}\n", "key loss.mask", "lines 2 and 3"),
    ("data: {size_schedule: {0: 32, 0x0: 64}}\n", "key data.size_schedule.0x0", "both on line 1"),  # one int twice
], ids=["section twice", "nested key twice", "stage name twice", "loss target twice", "same int spelled twice"])
def test_a_duplicate_key_names_the_file_the_key_path_and_both_lines(tmp_path, text, where, lines):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = one_error(err)
    assert str(path) in msg and f"{where} given twice in one mapping ({lines}" in msg, msg


def test_a_duplicate_key_in_a_study_file_or_an_override_is_refused(tmp_path):
    from sandbox.analysis.sweep import load_study

    study = tmp_path / "study.yaml"
    study.write_text(f"config: {CFG}\ngrid: {{model.width: [4, 8]}}\nseeds: 1\nseeds: 3\n")
    with pytest.raises(ConfigError, match=re.escape(f"{study}: line 4: key seeds given twice in one mapping "
                                                    "(lines 3 and 4)")):
        load_study(str(study))
    with pytest.raises(ConfigError, match=r"override 'loss=.*': line 1: key mask.dice given twice"):
        load_config(CFG, ["loss={mask: {dice: 1, dice: 2}}"])


def test_merge_keys_still_merge_and_a_key_beside_them_overrides(tmp_path):
    assert load_yaml_text("a: {<<: {x: 1, y: 2}, x: 3}\n") == {"a": {"x": 3, "y": 2}}
    assert load_yaml_text("b: &b {x: 1, y: 2}\nc: {<<: *b, x: 5}\nd: {<<: [*b, {z: 3}]}\n") == {
        "b": {"x": 1, "y": 2}, "c": {"x": 5, "y": 2}, "d": {"x": 1, "y": 2, "z": 3}}
    path = tmp_path / "merge.yaml"
    path.write_text("train: {<<: {epochs: 1, lr: 0.01}, epochs: 2}\n")
    cfg = load_config(path)
    assert (cfg.train.epochs, cfg.train.lr) == (2, 0.01)


def test_train_with_a_section_given_twice_stops_before_training(tmp_path, monkeypatch, capsys):
    """The issue's case: train: twice dropped epochs: 1 and trained the default 8 epochs."""
    path = tmp_path / "dup.yaml"
    path.write_text(f"out_dir: {tmp_path / 'runs'}\nname: dup\ntrain:\n  epochs: 1\ntrain:\n  lr: 0.01\n")
    code, out = train_cli(monkeypatch, capsys, "--config", str(path), *TINY)
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "key train given twice" in errors[0], out[-2000:]
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- command-line numbers
# (command, arguments, the flag, the accepted range): each refused at parsing, before the run is even
# looked for (the run does not exist), in one line naming the flag, the value and the range
FLAG_CASES = [
    ("probe", ["--steps", "100000000"], "--steps: got 100000000, expected an integer in [1, 10000] "
                                        "(as model.sample_steps)"),
    ("probe", ["--samples", "0"], "--samples: got 0, expected an integer in [2, 1000000] (as train.fid_samples)"),
    ("probe", ["--fit", "-5"], "--fit: got -5, expected an integer in [0, 1000000] (as train.probe_samples)"),
    ("interpolate", ["--random", "100000000"], "--random: got 100000000, expected an integer in [2, 32]"),
    ("interpolate", ["--seed", str(2**64)], f"--seed: got {2**64}, expected an integer in [0, 4294967295] (as seed)"),
    ("interpolate", ["--steps", "1"], "--steps: got 1, expected an integer in [2, 100]"),
    ("interpolate", ["--sample-steps", "0"], "--sample-steps: got 0, expected an integer in [1, 10000]"),
    ("interpolate", ["--from", *map(str, range(40))], "--from: got 40 endpoints, expected at most 32"),
    ("predict", ["--input", "x.png", "--fail-below", "nan"], "--fail-below: got nan, expected a number in [0, inf)"),
    ("predict", ["--input", "x.png", "--fail-below", "-1"], "--fail-below: got -1.0, expected a number in [0, inf)"),
    ("predict", ["--input", "x.png", "--mask-threshold", "1e999"],
     "--mask-threshold: got inf, expected a number in (0, 1)"),
    ("predict", ["--input", "x.png", "--batch-size", "0"],
     "--batch-size: got 0, expected an integer in [1, 65536] (as data.batch_size)"),
    ("evaluate", ["--threshold", "1"], "--mask-threshold: got 1.0, expected a number in (0, 1)"),
    ("evaluate", ["--batch-size", "10000000"], "--batch-size: got 10000000, expected an integer in [1, 65536]"),
    ("compare", ["--images", "0"], "--images: got 0, expected an integer in [1, 64] (as train.num_images)"),
    ("lr_find", ["--max-lr", "inf"], "--max-lr: got inf, expected a number in [1e-12, 1000]"),
    ("lr_find", ["--min-lr", "0"], "--min-lr: got 0.0, expected a number in [1e-12, 1000]"),
    ("lr_find", ["--steps", "100000000"], "--steps: got 100000000, expected an integer in [10, 10000]"),
    ("sweep", ["--seeds", "1000000000"], "--seeds: got 1000000000, expected an integer in [1, 1000]"),
    ("sweep", ["--jobs", "0"], "--jobs: got 0, expected an integer in [1, 256]"),
    ("probe", ["--steps", "ten"], "--steps: got 'ten', expected an integer in [1, 10000]"),
    ("probe", ["--steps", "9" * 5000], "--steps: got '99999"),  # an int beyond Python's 4300 digits
]


@pytest.mark.parametrize("name,args,expected", FLAG_CASES,
                         ids=[f"{c[0]} {c[2].split(':')[0]} {c[1][-1][:12]}" for c in FLAG_CASES])
def test_a_number_out_of_range_is_one_line_naming_flag_value_and_range(tmp_path, monkeypatch, capsys, name, args,
                                                                        expected):
    where = ["--config", str(tmp_path / "nowhere.yaml")] if name in ("lr_find", "sweep") else \
        ["--run", str(tmp_path / "nowhere")]
    start = time.perf_counter()
    code, err = cli(name, [*where, *args])
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {expected}"), err
    assert len(err[0]) < 400 and time.perf_counter() - start < 20, err


def test_every_numeric_flag_of_every_command_is_bounded():
    """No command declares ``type=int``/``type=float`` itself: every number goes through cli.add_number."""
    for path in sorted((ROOT / "sandbox").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                types = [k.value for k in node.keywords if k.arg == "type"]
                assert not any(isinstance(t, ast.Name) and t.id in ("int", "float") for t in types), \
                    f"{path.name}:{node.lineno}: a numeric flag outside cli.add_number"


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    build_trainer(load_config(CFG, [f"out_dir={out}", "name=vae", *TINY, "model.name=vae", "data.name=attractors",
                                    "loss={image: {mse: 1.0}}", "model.latent_dim=4", "train.monitor=val/loss",
                                    "train.monitor_mode=min", "train.fid_samples=0", "train.probe_samples=0"])).fit()
    return out / "vae"


def test_numbers_at_the_edges_of_their_ranges_are_taken(vae_run, monkeypatch, capsys):
    """The lowest accepted --samples (2: KID's least; 0 was a traceback) probes, and the largest seed walks."""
    code, err = cli("probe", ["--run", vae_run, "--split", "val", "--samples", "2", "--fit", "0"])
    assert code == 0, err
    code, err = cli("interpolate", ["--run", vae_run, "--random", "2", "--steps", "2", "--seed", str(2**32 - 1),
                                    "--no-wandb"])
    assert code == 0, err
    assert (vae_run / "images" / f"interp_slerp_random2-seed{2**32 - 1}.png").is_file()


# ---------------------------------------------------------------------------- length of the error line
def test_the_error_line_is_capped(capsys):
    assert len(one_line(SandboxError("short message"))) == len("short message")
    line = one_line(SandboxError("x" * 5_000_000))
    assert len(line) <= MAX_LINE and line.endswith(f"... ({5_000_000 - (MAX_LINE - 40):,} characters cut)"), line[-80:]

    @cli_entry
    def main():
        raise SandboxError("stages: " + ", ".join(["stages/1_a"] * 400_000))

    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err.splitlines()
    assert done.value.code == 2 and len(err) == 1 and len(err[0]) <= MAX_LINE + len("error: "), len(err[0])


def test_an_unfinished_staged_run_of_many_stages_is_a_short_message(tmp_path):
    """stages.json edited to thousands of finished stages: the message named every one (48 MB for 4 million)."""
    from sandbox.runs.stages import final_run

    run = tmp_path / "big"
    run.mkdir()
    stages = [{"index": i + 1, "name": "a", "dir": f"stages/{i + 1}_a", "status": "done"} for i in range(9998)]
    stages.append({"index": 9999, "name": "n" * 5000, "dir": "stages/9999_a", "status": "stopped"})
    (run / "stages.json").write_text(json.dumps({"name": "big", "stages": stages, "final": None}))
    with pytest.raises(SandboxError) as err:
        final_run(run)
    msg = str(err.value)
    assert len(msg) < 800 and "and 9,995 more" in msg and "staged run that has not finished" in msg, msg[:2000]


# ---------------------------------------------------------------------------- stages
def test_thousands_of_stages_are_refused_naming_the_count(tmp_path):
    path = tmp_path / "stages.yaml"
    path.write_text("stages:\n" + "".join(f"  - {{name: s{i}}}\n" for i in range(3000)))
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert time.perf_counter() - start < 10  # refused before 3000 configs are built
    assert f"{path}: stages: 3,000 stages; at most 100" in one_error(err), str(err.value)


def test_a_big_file_without_aliases_is_not_told_about_aliases(tmp_path):
    """3000 stages of two keys each: over the bound on values, which spoke of aliases the file does not have."""
    path = tmp_path / "stages.yaml"
    path.write_text("stages:\n" + "".join(f"  - {{name: s{i}, train.epochs: 1}}\n" for i in range(3000)))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = one_error(err)
    assert msg.startswith(f"{path}: line ") and "over 10,000 values" in msg, msg
    assert "alias" not in msg[len(str(path)):], msg


# ---------------------------------------------------------------------------- run names
@pytest.mark.parametrize("name", ["a\u2028b", "a\x7fb", "a\x85b", "a\x1b[31mred", "a" * 300, "é" * 128,
                                  "/".join(["d" * 250] * 5)],
                         ids=["line separator", "DEL", "C1 next line", "escape sequence", "300 characters",
                              "256 bytes of UTF-8", "1254 bytes in all"])
def test_a_run_name_the_terminal_or_the_filesystem_cannot_take_is_refused(tmp_path, name):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"name: {json.dumps(name)}\n")  # JSON strings are YAML double-quoted strings
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = one_error(err)
    assert "name: got " in msg and "printable characters only" in msg and "each folder at most 255 bytes" in msg, msg


def test_run_names_up_to_the_limits_are_taken():
    for name in ["d" * 255, "é" * 127, "a run/with spaces", "/".join(["d" * 200] * 5)]:
        assert load_config(CFG, [f"name={name}"]).name == name


def test_train_with_a_300_character_name_is_one_line(tmp_path, monkeypatch, capsys):
    code, out = train_cli(monkeypatch, capsys, "--config", str(CFG), f"out_dir={tmp_path}", "name=" + "a" * 300, *TINY)
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "each folder at most 255 bytes" in errors[0], out[-2000:]
    assert "Errno" not in out and not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------- YAML 1.1 integers (the new class)
@pytest.mark.parametrize("text,value", [
    ("seed: 010\n", 10),  # YAML 1.1: octal 8
    ("model: {width: 016}\n", 16),  # 14
    ("seed: 0o10\n", 8),  # YAML 1.2's octal, explicit
    ("seed: 0x10\n", 16),
    ("seed: 1_000\n", 1000),
], ids=["leading zero", "leading zero width", "0o octal", "hex", "underscores"])
def test_an_integer_is_what_it_looks_like(tmp_path, text, value):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    cfg = load_config(path)
    assert (cfg.seed if text.startswith("seed") else cfg.model.width) == value


def test_a_base_60_number_is_not_an_integer(tmp_path):
    """YAML 1.1 read train.epochs: 1:30 as 90 epochs, silently."""
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  epochs: 1:30\n")
    with pytest.raises(ConfigError, match=r"train.epochs: got '1:30', expected an integer"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"train.checkpoint_every: got '1:00', expected an integer"):
        load_config(CFG, ["train.checkpoint_every=1:00"])
    assert load_config(CFG, ["seed=010"]).seed == 10
    assert read_yaml(path) == {"train": {"epochs": "1:30"}}


def test_a_saved_config_reads_back_the_same(tmp_path):
    """config.yaml of a run named 08: written bare (YAML 1.1 sees a string there), it read back as the
    number 8 and the run could not be resumed; 1e3 was read back as 1000.0 before this round too."""
    from sandbox.config.loading import save_config

    cfg = load_config(CFG, ["name='08'", "track.group='1e3'", "track.tags=['0o10', '1:30', '010', 'no']",
                            "seed=010"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert (again.name, again.track.group, again.track.tags, again.seed) == ("08", "1e3", ["0o10", "1:30", "010",
                                                                                         "no"], 10)
    assert again.to_dict() == {**cfg.to_dict(), "source": str(tmp_path / "config.yaml")}
