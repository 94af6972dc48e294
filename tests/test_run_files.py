"""Hand-edited run files: every file of a run directory a user can edit is read against its schema, and
a bad one is one line naming the file, the field (or line) and what is expected; the commands print it
as ``error: ...`` and exit 2, never a traceback.

    checkpoints/*/trainer_state.json   sandbox.runs.checkpoints.read_state (the one reader)
    metrics.jsonl                      sandbox.tracking.metrics_log.read_metrics / truncate_metrics
    splits/*.csv                       sandbox.data.splits.read_splits
    checkpoints/*/config.yaml          a model section that no longer fits the weights (resume, evaluate)

and a class found by reading those readers as an attacker would: a FIFO or an oversized file in a run
file's place (a read that blocks forever or loads gigabytes), and split files that name images
outside the data root. One tiny folder run is trained per module; each test edits a copy of it."""
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sandbox import build_trainer, load_config
from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import STATE_SCHEMA, read_state
from sandbox.tracking.metrics_log import read_metrics, truncate_metrics
from tests.conftest import ROOT, cli

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CFG = ROOT / "configs" / "unet_dice.yaml"
TINY = ["data.size=32", "data.batch_size=4", "model.width=4", "model.depth=2", "train.epochs=1", "train.log_every=1",
        "train.num_images=0", "track.wandb=disabled", "train.mixed_precision=no"]


def folder(root: Path, n: int = 12) -> Path:
    """``n`` 24x20 RGB images with square masks: a labelled folder, so the run writes splits/."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / "images" / f"{i:02d}.jpg")
        m = np.zeros((20, 24), np.uint8)
        m[4:14, 5:5 + i] = 255
        Image.fromarray(m).save(root / "masks" / f"{i:02d}.png")
    return root


def overrides(out: Path, name: str, data: Path, *extra: str) -> list[str]:
    return [f"out_dir={out}", f"name={name}", "data.name=folder", f"data.root={data}", "data.val_fraction=0.25",
            "data.test_fraction=0.25", *TINY, *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("runfiles")
    data = folder(base / "data")
    build_trainer(load_config(CFG, overrides(base, "r", data))).fit()
    return base / "r", data


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the trained run (tests edit its files)."""
    return Path(shutil.copytree(trained[0], tmp_path / "r"))


def one_error(code: int, err: list[str], *patterns: str) -> str:
    """The command failed with exit 2 and one ``error:`` line that matches every pattern."""
    errors = [line for line in err if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, err[-5:]
    for p in patterns:
        assert re.search(p, errors[0]), (p, errors[0])
    return errors[0]


def edit_state(run: Path, change, which=("last", "best")) -> None:
    for w in which:
        path = run / "checkpoints" / w / "trainer_state.json"
        path.write_text(json.dumps(change(json.loads(path.read_text()))))


def resume(run):
    return cli("train", ["--resume", run])


def evaluate(run):
    return cli("evaluate", ["--run", run])


def init_from(source, data):
    out = source if source.name == "r" else source.parent.parent
    return cli("train", ["--config", CFG, *overrides(out.parent, "warm", data, f"train.init_from={source}")])


# ------------------------------------------------------------------------ trainer_state.json

STATE_EDITS = {
    "epoch a string": (lambda s: {**s, "epoch": "one"}, r"field 'epoch' is 'one'; expected an integer >= 0"),
    "best a list": (lambda s: {**s, "best": [1, 2]}, r"field 'best' is \[1, 2\]; expected a number or null"),
    "a list at the top": (lambda s: [s], r"a JSON list at the top level; expected the JSON object train.py writes"),
    # before: a resume silently trained epochs -4..2 (and stepped its LR schedule past its end)
    "a negative epoch": (lambda s: {**s, "epoch": -4}, r"field 'epoch' is -4; expected an integer >= 0"),
    "not JSON": (lambda s: "{", None),
}


@pytest.mark.parametrize("how", ["resume", "evaluate", "init_from"])
@pytest.mark.parametrize("edit", list(STATE_EDITS))
def test_a_bad_trainer_state_is_one_line_naming_the_file_and_field(run, trained, monkeypatch, capsys, edit, how):
    change, message = STATE_EDITS[edit]
    if message is None:  # not JSON at all: written as text
        for w in ("last", "best"):
            (run / "checkpoints" / w / "trainer_state.json").write_text('{"epoch": 1,')
        message = r"not valid JSON \(Expecting .* at line 1 column 13\)"
    else:
        edit_state(run, change)
    code, err = {"resume": lambda: resume(run),
                 "evaluate": lambda: evaluate(run),
                 "init_from": lambda: init_from(run, trained[1])}[how]()
    one_error(code, err, r"checkpoints/(best|last)/trainer_state.json'?: " + message)
    assert not (run / "eval").exists() and not (run.parent / "warm").exists()


def test_a_bad_best_state_does_not_stop_a_resume_which_rewrites_best(run, monkeypatch, capsys, caplog):
    """best is never resumed from: a resume goes on from last, and writes best again from it (before,
    comparing the best epoch 'one' with 1 was a TypeError)."""
    edit_state(run, lambda s: {**s, "epoch": "one"}, ("best",))
    code, err = resume(run)
    assert code == 0, err[-3:]
    assert read_state(run / "checkpoints" / "best")["epoch"] == 1
    assert "repaired from last" in caplog.text and "falling back" not in caplog.text


@pytest.mark.parametrize("field", list(STATE_SCHEMA))
def test_every_field_of_the_state_schema_is_checked(tmp_path, field):
    """Each declared field refuses a value of another type, naming the file and the field (a string where
    a number or list is expected, a number where a string or list is)."""
    bad = 7 if field in ("wandb_id", "stopped_early", "files", "weights_only", "sums", "epoch_sums") else "x"
    (tmp_path / "trainer_state.json").write_text(json.dumps({"epoch": 1, field: bad}))
    with pytest.raises(SandboxError, match=rf"trainer_state.json'?: field '{field}' is {bad!r}; expected "):
        read_state(tmp_path)


def test_unknown_state_fields_are_carried_unread(run, monkeypatch, capsys):
    """Decided: a field the schema does not declare is accepted (nothing reads it, so it cannot break a
    reader; a run of a later version with a new field still evaluates and resumes)."""
    edit_state(run, lambda s: {**s, "note": {"by": "hand"}})
    assert read_state(run / "checkpoints" / "last")["note"] == {"by": "hand"}
    code, err = evaluate(run)
    assert code == 0, err[-3:]


def test_listed_files_must_lie_inside_the_checkpoint(run):
    edit_state(run, lambda s: {**s, "files": [*s["files"], "../../../etc/passwd"]}, ("last",))
    with pytest.raises(SandboxError, match=r"field 'files' has '\.\./\.\./\.\./etc/passwd' \(entry 5\); expected a list of the checkpoint's files"):
        read_state(run / "checkpoints" / "last")


def test_trainer_state_json_has_one_reader():
    """Every reader goes through read_state: no other module opens trainer_state.json itself."""
    direct = re.compile(r"(trainer_state\.json|STATE_FILE).*(read_text|read_bytes|open\(|json\.load)"
                        r"|(read_text|read_bytes|open\(|json\.load).*(trainer_state\.json|STATE_FILE)")
    found = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "sandbox").rglob("*.py"))
             if p.name != "checkpoints.py" or p.parent.name != "runs"
             for i, line in enumerate(p.read_text().splitlines(), start=1) if direct.search(line)]
    assert not found, found


# ------------------------------------------------------------------------ metrics.jsonl

def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def write_lines(run: Path, lines: list[bytes]) -> bytes:
    data = b"".join(lines)
    (run / "metrics.jsonl").write_bytes(data)
    return data


def test_compare_skips_a_record_without_its_fields_with_a_warning(run, trained, monkeypatch, capsys, caplog):
    """Read-only commands (compare, reports, plots) warn and skip the line: the rest of the history is
    still the run's own, and the warning says which line is missing from the table."""
    recs = records(run)
    first = {k: v for k, v in recs[0].items() if k != "epoch"}
    write_lines(run, [json.dumps(r).encode() + b"\n" for r in [first, *recs[1:]]])
    code, err = cli("compare", ["--run", trained[0], run, "--out", run.parent / "cmp"])
    assert code == 0, err[-3:]
    warned = [r.getMessage() for r in caplog.records if "metrics.jsonl" in r.getMessage()]
    assert len(warned) == 1 and "skipped 1 line(s) that are not metrics records (line 1: no field 'epoch')" \
        in warned[0], warned


def test_compare_of_a_binary_metrics_file_is_one_line(run, trained, monkeypatch, capsys, caplog):
    write_lines(run, [bytes(range(128, 256)) * 4 + b"\n", b"\xff\xfe binary\n"])
    code, err = cli("compare", ["--run", trained[0], run, "--out", run.parent / "cmp"])
    one_error(code, err, r"has no validated epoch in metrics.jsonl")
    assert any("skipped 2 line(s) that are not metrics records (line 1: not UTF-8 text: byte 0x80" in r.getMessage()
               for r in caplog.records), caplog.text


@pytest.mark.parametrize("bad,why", [
    (b'{"split": "train", "step": 2, "time": 0.5}\n', r"no field 'epoch'"),
    (b'{"split": "train", "epoch": "one", "step": 2, "time": 0.5}\n', r"field 'epoch' is 'one', expected an integer"),
    (b"\x00\x9f\x92\x96 binary\n", r"not UTF-8 text: byte 0x9f at offset 1"),
    (b"[1, 2]\n", r"a JSON list, not an object"),
    (b'{"split": "val", "epoch": 1, "step": 2, "time": "late"}\n', r"field 'time' is 'late', expected a number"),
], ids=["missing epoch", "epoch a string", "binary", "a list", "time a string"])
def test_resume_refuses_a_bad_line_in_the_middle_naming_it(run, monkeypatch, capsys, bad, why):
    """A resume rewrites metrics.jsonl (records after the checkpoint dropped): skipping the line there
    would delete it for good, so it stops and names it; the file is left as it was."""
    good = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    before = write_lines(run, [good[0], bad, *good[1:]])
    code, err = resume(run)
    one_error(code, err, r"metrics.jsonl'?: line 2 is not a metrics record \(" + why,
              r"fix or delete the line, then resume")
    assert (run / "metrics.jsonl").read_bytes() == before


def test_a_torn_last_line_is_still_dropped_on_resume(run, monkeypatch, capsys):
    """Kept as it was: a kill mid-write leaves a last line without its newline; it is dropped, silently."""
    good = (run / "metrics.jsonl").read_bytes()
    (run / "metrics.jsonl").write_bytes(good + b'{"split": "train", "epo')
    code, err = resume(run)
    assert code == 0 and not [line for line in err if "metrics" in line], err[-3:]
    assert (run / "metrics.jsonl").read_bytes() == good


def test_a_bad_last_line_that_is_not_torn_is_not_dropped(tmp_path):
    """A last line with its newline was written whole: if it is not a record, it was edited, not torn."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"split": "val", "epoch": 1, "step": 2, "time": 1.0}\n{"split": "val"}\n')
    with pytest.raises(SandboxError, match=r"line 2 is not a metrics record \(no field 'epoch'\)"):
        truncate_metrics(path, 1, 2)
    assert len(read_metrics(path)) == 1


# ------------------------------------------------------------------------ splits/*.csv

def test_a_split_file_that_is_not_utf8_is_one_line(run, monkeypatch, capsys):
    test_csv = run / "splits" / "test.csv"
    test_csv.write_bytes(test_csv.read_bytes().replace(b"stem,image", b"stem,im\xe4ge", 1))
    one_error(*evaluate(run),
              r"splits/test.csv'?: not UTF-8 text \(byte 0xe4 at offset 7\); expected a UTF-8 CSV with the "
              r"header stem,image")


def test_split_files_may_not_name_images_outside_the_data_root(run, trained, tmp_path, monkeypatch, capsys):
    """A split file names images relative to data.root: an absolute path or '..' would have evaluate (and
    a resumed run) read and score files outside the dataset it was given."""
    outside = tmp_path / "elsewhere.jpg"
    shutil.copy(next((trained[1] / "images").iterdir()), outside)
    test_csv = run / "splits" / "test.csv"
    lines = test_csv.read_text().splitlines()
    stem, _, mask = lines[1].split(",")
    for name in (str(outside), "../elsewhere.jpg"):
        test_csv.write_text("\n".join([lines[0], f"{stem},{name},{mask}", *lines[2:]]) + "\n")
        # a long tmp path is shortened in the message (its closing quote with it)
        shown = r"/.+" if name.startswith("/") else re.escape(name) + "'"
        one_error(*evaluate(run),
                  rf"splits/test.csv'?: line 2: image '{shown} is outside the data root; expected a "
                  r"path relative to data.root")
    assert not (run / "eval").exists()


# ------------------------------------------------------------------------ a checkpoint of another width

def test_resume_names_the_tensor_of_another_shape_and_the_width_that_fits(run, monkeypatch, capsys):
    """config.yaml edited after training (here the run's and its checkpoints', so the config check passes):
    before, 'could not be loaded (RuntimeError: Error(s) in loading state_dict ...)' and nothing more."""
    for f in [run / "config.yaml", *run.glob("checkpoints/*/config.yaml")]:
        f.write_text(f.read_text().replace("\n  width: 4\n", "\n  width: 8\n"))
    one_error(*resume(run),
              r"checkpoints/last' holds weights of another model than its config.yaml builds \("
              r"encoder\.stages\.0\.body\.0\.0\.weight: \(4, 3, 3, 3\) in the checkpoint, \(8, 3, 3, 3\) in the "
              r"model; they fit model.width=4, config.yaml says 8\): was config.yaml edited")
    one_error(*evaluate(run),
              r"\(4, 3, 3, 3\) there, \(8, 3, 3, 3\) here.*they fit model.width=4 \(.*config.yaml says 8\)")


# ------------------------------------------------------------------------ new class: what is in a file's place

@pytest.fixture
def unblock():
    """Guards the FIFO tests against the code they test: a read that blocks on a FIFO (the code before the
    fix) gets an end of file after 20 s, instead of hanging the test session forever."""
    fifos, stop = [], threading.Event()

    def watch():
        deadline = time.monotonic() + 20
        while not stop.wait(0.2):
            if time.monotonic() < deadline:
                continue
            for f in fifos:
                try:  # succeeds only while a reader waits on it: the writer's close is the reader's EOF
                    os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    pass

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    yield fifos
    stop.set()
    thread.join()


@pytest.mark.parametrize("where,how", [
    ("checkpoints/last/trainer_state.json", "resume"),
    ("checkpoints/last/trainer_state.json", "init_from"),
    ("metrics.jsonl", "resume"),
    ("splits/test.csv", "evaluate"),
])
def test_a_fifo_in_place_of_a_run_file_is_refused_at_once(run, trained, monkeypatch, capsys, unblock, where, how):
    """A named pipe where a run file belongs made resume and init_from wait forever for a writer (and a
    split file was called missing)."""
    path = run / where
    path.unlink()
    os.mkfifo(path)
    unblock.append(path)
    started = time.monotonic()
    code, err = {"evaluate": lambda: evaluate(run),
                 "resume": lambda: resume(run),
                 "init_from": lambda: init_from(run / "checkpoints" / "last", trained[1])}[how]()
    assert time.monotonic() - started < 15, "blocked on the FIFO"
    one_error(code, err, re.escape(where) + r"'?: a FIFO \(named pipe\), not a regular file; expected ")


def test_an_oversized_trainer_state_is_refused_unread(run, monkeypatch, capsys):
    """A huge trainer_state.json (2 GB in the report; 64 MiB here) was read whole into memory, then failed
    as JSON with a traceback; it is refused after its first MiB. A sparse file: it takes no disk space."""
    for w in ("last", "best"):
        with open(run / "checkpoints" / w / "trainer_state.json", "r+b") as f:
            f.truncate(64 << 20)
    one_error(*evaluate(run),
              r"best/trainer_state.json'?: over 1 MiB, too big for the JSON object train.py writes")
