"""loki chat, scripted: stdin that is not a terminal gives one user turn per line."""

import io
import json
import subprocess
import sys
from argparse import Namespace

import pytest
import torch

from lokilm.chat import Chat, run
from lokilm.config import GenerateConfig
from lokilm.errors import LokiError
from lokilm.interop.hf_import import save_as_run
from lokilm.model import Transformer
from lokilm.model.config import ModelConfig

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture
def chat_run(tmp_path, small_tokenizer):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=512, n_layer=2, n_head=2, d_model=32, d_ff=64, context_length=64,
                                    position="rope"))
    model.init_weights()
    save_as_run(model, small_tokenizer, tmp_path / "run")
    return tmp_path / "run"


def args(run_dir, **kw):
    return Namespace(run_dir=str(run_dir), **{"max_new_tokens": 8, "temperature": 0.0, "top_k": 0, "top_p": 1.0,
                                              "seed": 0, **kw})


def session(run_dir, lines, **kw) -> str:
    out = io.StringIO()
    assert run(args(run_dir, **kw), stdin=io.StringIO("".join(f"{line}\n" for line in lines)), out=out) == 0
    return out.getvalue()


def test_scripted_turns_settings_and_reset(chat_run):
    text = session(chat_run, ["Who goes there?", "/reset", "Who goes there?", "/set temperature 0.7", "/set top_p 2",
                              "/set seed x", "/show", "/bogus"])
    turns = text.split("> Who goes there?\n")
    assert len(turns) == 3
    assert turns[1].split("[conversation cleared]")[0] == turns[2].split("[temperature")[0]  # greedy, same history
    assert "[temperature = 0.7]" in text and "[top_p=2 is out of range]" in text and "wants a int" in text
    assert "temperature=0.7" in text and "/reset (forget the conversation)" in text


def test_old_turns_are_dropped_to_fit_the_context(chat_run):
    chat = Chat.load(str(chat_run), GenerateConfig(max_new_tokens=8, temperature=0.0, top_k=None))
    out = io.StringIO()
    for _ in range(6):
        chat.answer("Is this a dagger which I see before me, the handle toward my hand?", out)
    assert "[dropped the" in out.getvalue() and "to fit the 64-token context]" in out.getvalue()
    assert len(chat.prompt_ids(chat.turns[:-1])) <= 64 - 8
    assert len(chat.turns) < 12  # six questions and answers did not all fit


def test_a_chat_template_is_used_when_the_tokenizer_has_one(chat_run):
    (chat_run / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE, "eos_token": "<|endoftext|>"}))
    chat = Chat.load(str(chat_run), GenerateConfig(max_new_tokens=4, temperature=0.0, top_k=None))
    ids = chat.prompt_ids([{"role": "user", "content": "Hail"}])
    assert chat.tok.decode(ids) == "<|im_start|>user\nHail<|im_end|>\n<|im_start|>assistant\n"
    base = Chat.load(str(chat_run), GenerateConfig())
    base.template = None
    assert base.tok.decode(base.prompt_ids([{"role": "user", "content": "Hail"}])).endswith("User: Hail\nAssistant:")


def test_bad_options_and_the_real_command_through_a_pipe(chat_run):
    with pytest.raises(LokiError, match="--top-p in"):
        run(args(chat_run, top_p=0.0), stdin=io.StringIO(""), out=io.StringIO())
    done = subprocess.run([sys.executable, "-m", "lokilm.cli", "chat", str(chat_run), "--max-new-tokens", "4"],
                          input="Hail, thane\n/quit\nnot read\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("> Hail, thane\n") and "not read" not in done.stdout
