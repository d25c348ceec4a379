"""What a careless or hostile user does to the "use" side (chat, generate, export, import, report, ablate): each
test failed before its fix. The standard: a one-line `loki: error: ...`, never a traceback, a silent wrong result
or a lost file."""

import errno
import io
import json
import shutil
import subprocess
import sys
from argparse import Namespace

import pytest
import torch

from lokilm.chat import run as chat
from lokilm.cli import main
from lokilm.errors import LokiError
from lokilm.generate import sample_next
from lokilm.interop.hf_import import save_as_run
from lokilm.model import Transformer
from lokilm.model.config import ModelConfig


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line_error(code, err, *named):
    assert code == 2 and err.startswith("loki: error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and all(n in err for n in named), err


def tiny_run(path, tokenizer, position="alibi", poison=False):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=512, n_layer=2, n_head=2, d_model=32, d_ff=64, context_length=64,
                                    position=position))
    model.init_weights()
    if poison:  # a diverged run's weights
        with torch.no_grad():
            model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    save_as_run(model, tokenizer, path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_tokenizer):
    root = tmp_path_factory.mktemp("use")
    return {"alibi": tiny_run(root / "alibi", small_tokenizer), "rope": tiny_run(root / "rope", small_tokenizer, "rope"),
            "nan": tiny_run(root / "nan", small_tokenizer, poison=True), "root": root}


# ---------------------------------------------------------------- generate

def test_a_tiny_temperature_samples_the_top_token_instead_of_crashing():
    logits = torch.tensor([[1.0, 3.0, 2.0, -4.0]])
    for temperature in (1e-45, 1e-300, 1e-30):  # logits / t overflowed to inf, and inf - inf is NaN
        assert int(sample_next(logits, temperature, None, None, torch.Generator().manual_seed(0))) == 1
    assert int(sample_next(logits, 1e-45, 2, 0.5, torch.Generator().manual_seed(0))) == 1


@pytest.mark.parametrize("argv, named", [
    (["--seed", str(2 ** 70)], "generate.seed"),  # was ValueError: Overflow when unpacking long long
    (["--temperature", "1e-45"], None),  # was RuntimeError: probability tensor contains inf/nan
])
def test_generate_survives_absurd_seeds_and_temperatures(runs, capsys, argv, named):
    code, err = cli(capsys, "generate", runs["alibi"], "--prompt", "Hi", "--max-new-tokens", 2, *argv)
    if named:
        one_line_error(code, err, named)
    else:
        assert code == 0, err


@pytest.mark.parametrize("extra", [["--temperature", "0"], ["--temperature", "0.8"],
                                   ["--temperature", "0.8", "--exit-threshold", "0.5"],
                                   ["--temperature", "0", "--self-speculative", "1"]])
def test_nan_weights_are_a_clear_error_not_noise(runs, capsys, extra):
    # greedy decoding of NaN logits silently gave token 0 forever; sampling raised a multinomial traceback
    code, err = cli(capsys, "generate", runs["nan"], "--prompt", "Hi", "--max-new-tokens", 3, *extra)
    one_line_error(code, err, "NaN")


# ---------------------------------------------------------------- chat

def chat_args(run_dir, **kw):
    return Namespace(run_dir=str(run_dir), **{"max_new_tokens": 4, "temperature": 0.0, "top_k": 0, "top_p": 1.0,
                                              "seed": 0, **kw})


@pytest.mark.parametrize("flag, value", [("temperature", float("nan")), ("temperature", float("inf")),
                                         ("seed", 2 ** 70)])
def test_chat_refuses_nan_and_out_of_range_options(runs, flag, value):
    with pytest.raises(LokiError, match=f"--{flag} .* is out of range"):
        chat(chat_args(runs["alibi"], **{flag: value}), stdin=io.StringIO("Hi\n"), out=io.StringIO())


def test_chat_set_refuses_what_the_options_refuse_and_keeps_the_session(runs):
    lines = ["/set temperature nan", "/set max_new_tokens 0", f"/set seed {2 ** 70}", f"/set seed {2 ** 64 - 1}",
             "Hi", "Ho", "/show"]
    out = io.StringIO()
    # the seed 2**64 - 1 is legal; the second answer's seed (+1) used to overflow
    assert chat(chat_args(runs["alibi"], temperature=0.7), stdin=io.StringIO("".join(f"{x}\n" for x in lines)),
                out=out) == 0
    text = out.getvalue()
    for name in ("temperature=nan", "max_new_tokens=0", f"seed={2 ** 70}"):
        assert f"[{name} is out of range]" in text
    assert "> Hi\n" in text and "> Ho\n" in text and "temperature=0.7, " in text and "max_new_tokens=4" in text


# ---------------------------------------------------------------- export

def test_export_force_never_deletes_the_run_or_a_folder_that_is_not_an_export(runs, tmp_path, capsys):
    run = runs["alibi"]
    before = sorted(p.name for p in run.iterdir())
    other = tmp_path / "docs"
    other.mkdir()
    (other / "thesis.txt").write_text("years of work")
    (tmp_path / "a-file").write_text("x")
    for out, named in ((run, "is the run directory or holds it"), (run.parent, "is the run directory or holds it"),
                       (runs["rope"], "is a lokilm run directory"), (other, "not a model folder"),
                       (tmp_path / "a-file", "is a file")):
        code, err = cli(capsys, "export", run, out, "--force")
        one_line_error(code, err, named)
    assert sorted(p.name for p in run.iterdir()) == before and (run / "checkpoints").is_dir()
    assert (other / "thesis.txt").read_text() == "years of work" and (tmp_path / "a-file").read_text() == "x"
    # an earlier export is still replaced, and a missing parent folder is made (it was a FileNotFoundError)
    assert main(["export", str(run), str(tmp_path / "new" / "deep" / "hf")]) == 0
    assert main(["export", str(run), str(tmp_path / "new" / "deep" / "hf"), "--force"]) == 0


def test_export_on_a_full_disk_is_a_clear_error_and_leaves_nothing(runs, tmp_path, capsys, monkeypatch):
    import lokilm.interop.export as export

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "save_file", full)
    code, err = cli(capsys, "export", runs["alibi"], tmp_path / "hf")
    one_line_error(code, err, "No space left on device")
    assert list(tmp_path.iterdir()) == []  # no half-written folder, no temporary folder


def test_a_killed_exports_scratch_folder_is_removed_by_the_next_export(runs, tmp_path):
    dead = tmp_path / ".loki-export-999999999-abcd"  # kill -9 left it, with a full copy of the weights
    alive = tmp_path / ".loki-export-1-abcd"  # pid 1 is alive: another export still writing
    for scratch in (dead, alive):
        (scratch / "model").mkdir(parents=True)
    assert main(["export", str(runs["alibi"]), str(tmp_path / "hf")]) == 0
    assert not dead.exists() and alive.exists()


# ---------------------------------------------------------------- import

@pytest.fixture(scope="module")
def exported(runs):
    out = {}
    for kind in ("alibi", "rope"):
        out[kind] = runs["root"] / f"{kind}-hf"
        assert main(["export", str(runs[kind]), str(out[kind])]) == 0
    return out


def edited(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("kind, changes, named", [
    ("alibi", {"vocab_size": "x"}, "model.vocab_size"),  # was TypeError from torch.empty
    ("alibi", {"context_length": 0}, "model.context_length"),
    ("alibi", {"n_head": 3}, "not divisible"),
    ("alibi", {"n_layer": 10 ** 9}, "the config does not match the weights"),
    ("rope", {"max_position_embeddings": 0}, "model.context_length"),  # was imported, as a model of context 0
    ("rope", {"num_hidden_layers": 10 ** 9}, "the config does not match the weights"),  # was allocating forever
])
def test_an_import_with_a_config_that_lies_is_refused_naming_the_field(exported, tmp_path, capsys, kind, changes,
                                                                      named):
    source = edited(exported[kind], tmp_path / "src", **changes)
    code, err = cli(capsys, "import", source, tmp_path / "run")
    one_line_error(code, err, named)
    assert not (tmp_path / "run").exists()


def test_an_import_whose_shapes_differ_names_the_mismatch(exported, tmp_path, capsys):
    source = edited(exported["alibi"], tmp_path / "src", d_model=64, d_ff=128)
    code, err = cli(capsys, "import", source, tmp_path / "run")
    one_line_error(code, err, "size mismatch for")


# ---------------------------------------------------------------- report

def test_report_survives_damaged_files_in_the_run_directory(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["alibi"], run)
    good = [{"step": s, "tokens": 1024 * s, "loss": 5.0 - 0.1 * s, "lr": 1e-3} for s in range(1, 6)]
    lines = [json.dumps(r) for r in good] + ['{"step": "x", "loss": "nan"}', '{"step": 6, "loss": 1e999}']
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "events.jsonl").write_bytes(b'{"event": "rollback", "step": "x"}\n\xff\xfe\n')
    (run / "heldout_windows.json").write_text('{"bits": "x", "windows": 3}')  # was a ValueError from numpy
    code, err = cli(capsys, "report", run, "--no-heldout")
    assert code == 0, err
    md = (run / "report.md").read_text()
    assert "1 records of" in md and "Held-out bits per byte" not in md
    (run / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 5.0}\n\xff\xfe not utf-8\n{"step": 2, "loss": 4.0}\n')
    code, err = cli(capsys, "report", run, "--no-heldout")  # was a UnicodeDecodeError
    assert code == 0, err
    assert "could not be read, so the training curves are left out" in (run / "report.md").read_text()


def test_report_into_a_read_only_run_directory_is_a_clear_error(runs, capsys, monkeypatch):
    import lokilm.fileio

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(lokilm.fileio, "atomic_write", read_only)
    code, err = cli(capsys, "report", runs["alibi"], "--no-heldout")
    one_line_error(code, err, "cannot write the report", "Read-only file system")


# ---------------------------------------------------------------- ablate

def test_a_second_ablate_on_the_same_folder_is_refused(tmp_path, capsys):
    # two at once trained the same run directories together: metrics.jsonl held steps 0 1 2 3 4 5 4 6 5 7 ...
    root = tmp_path / "abl"
    (tmp_path / "a.yaml").write_text(json.dumps({"config": "configs/tiny.yaml", "run_dir": str(root),
                                                 "variants": {"a": {}, "b": {"model.position": "rope"}}}))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from lokilm.rundir import RunDir\n"
        f"with RunDir.at({str(root)!r}).lock('ablate'):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = cli(capsys, "ablate", tmp_path / "a.yaml")
        one_line_error(code, err, "is in use by `loki ablate` (pid")
        assert sorted(p.name for p in root.iterdir()) == [".lock"]  # nothing prepared, nothing trained
    finally:
        holder.kill()
        holder.wait()


def test_a_damaged_kept_score_file_is_not_summarised():
    from lokilm.experiments.heldout import well_formed

    good = {"checkpoint": "c", "step": 4, "windows": 2, "bits": [1.0, 2.0], "bytes": [3, 4], "documents": [0, 1]}
    assert well_formed(good)
    for bad in ({**good, "bits": "x"}, {**good, "bits": [1.0]}, {**good, "bytes": [0, 0]}, {**good, "step": None},
                {**good, "bits": [1.0, float("nan")]}, {"windows": 2}):
        assert not well_formed(bad)
