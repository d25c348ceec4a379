"""`loki chat RUN_DIR`: an interactive session with a model, streamed, with the conversation kept in its context.

A model whose tokenizer has a chat template (an imported instruct model) gets its turns in that template; a
base model continues a plain "User: ... / Assistant: ..." transcript. When stdin is not a terminal every line
is one user turn, so a session can be scripted (`printf 'Hi\n/reset\n' | loki chat RUN_DIR`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field, replace

import torch

from lokilm.config import GenerateConfig
from lokilm.errors import LokiError
from lokilm.generate import generate_ids, stream_text
from lokilm.interop.export import chat_template_file
from lokilm.rundir import RunDir
from lokilm.tokenizer import encode, eot_id, load_tokenizer

HELP = """commands: /reset (forget the conversation), /set NAME VALUE (temperature, top_k, top_p, max_new_tokens,
seed; e.g. /set temperature 0.7), /show (the settings), /help, /quit (or end of input). Ctrl-C stops an answer."""
SETTABLE = {"temperature": float, "top_k": int, "top_p": float, "max_new_tokens": int, "seed": int}
USER, ASSISTANT = "User:", "Assistant:"


def _jinja(template: str):
    # as transformers renders chat templates: sandboxed, with its whitespace rules
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise LokiError(f"the chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


@dataclass
class Chat:
    """A conversation with one model: its turns, how they become a prompt, and the answers' settings."""
    model: torch.nn.Module
    tok: object
    settings: GenerateConfig
    template: object | None = None  # a compiled chat template, or None: a plain transcript
    special: dict = field(default_factory=dict)  # bos_token / eos_token of the template
    turns: list[dict] = field(default_factory=list)
    answered: int = 0

    @classmethod
    def load(cls, run_dir: str, settings: GenerateConfig, device: str = "cpu") -> Chat:
        from lokilm.checkpoint import load_model

        model, cfg = load_model(run_dir, device)
        run = RunDir(cfg)
        tok = load_tokenizer(run.tokenizer)
        template, special = None, {}
        extra = chat_template_file(run.tokenizer)
        if extra.is_file():
            try:
                info = json.loads(extra.read_text())
            except ValueError as e:
                raise LokiError(f"{extra} is not valid JSON ({e})") from None
            if info.get("chat_template"):
                template = _jinja(info["chat_template"])
                special = {k: info[k] for k in ("bos_token", "eos_token") if info.get(k)}
        return cls(model, tok, settings, template, special)

    @property
    def stop_ids(self) -> set[int]:
        ids = {eot_id(self.tok)}
        eos = self.special.get("eos_token")
        if eos is not None and self.tok.token_to_id(eos) is not None:
            ids.add(self.tok.token_to_id(eos))
        return ids

    def prompt_ids(self, turns: list[dict]) -> list[int]:
        if self.template is not None:
            text = self.template.render(messages=turns, add_generation_prompt=True, **self.special)
            return encode(self.tok, text)  # the template writes its own special tokens
        lines = [f"{USER if t['role'] == 'user' else ASSISTANT} {t['content']}" for t in turns]
        return [eot_id(self.tok)] + encode(self.tok, "\n".join(lines) + f"\n{ASSISTANT}")

    def fit(self) -> tuple[list[int], int]:
        """The prompt for the conversation so far, after dropping the oldest turns until it leaves room for an
        answer in the context; and how many turns were dropped."""
        ctx = self.model.cfg.context_length
        room = ctx - min(self.settings.max_new_tokens, ctx // 2)
        dropped = 0
        ids = self.prompt_ids(self.turns)
        while len(ids) > room and len(self.turns) > 1:
            self.turns.pop(0)
            dropped += 1
            ids = self.prompt_ids(self.turns)
        return ids[-room:], dropped  # a single turn longer than the room keeps its end

    def answer(self, message: str, out=sys.stdout) -> str:
        """Stream the model's answer to `message` to `out`; Ctrl-C stops it and keeps what was said."""
        self.turns.append({"role": "user", "content": message})
        ids, dropped = self.fit()
        if dropped:
            print(f"[dropped the {dropped} oldest turn{'s' * (dropped > 1)} to fit the {self.model.cfg.context_length}"
                  "-token context]", file=out, flush=True)
        seed = self.settings.seed + self.answered  # each answer its own draw; past 2**64 it wraps, as torch's seed does
        settings = replace(self.settings, seed=seed - 2**64 if seed >= 2**64 else seed)
        self.answered += 1
        stops, text = self.stop_ids, ""
        tokens = generate_ids(self.model, ids, settings, self.tok.get_vocab_size(), stop_id=eot_id(self.tok))
        held = _Holdback(out, None if self.template is not None else f"\n{USER}")
        try:
            for text in stream_text(self.tok, _until(tokens, stops), held.write):
                if held.stopped:
                    break
        except KeyboardInterrupt:
            print(" [stopped]", end="", file=out)
        text = held.final()
        print(file=out, flush=True)
        self.turns.append({"role": "assistant", "content": text.strip()})
        return text

    def command(self, line: str, out=sys.stdout) -> bool:
        """Run a /command; False when the session should end."""
        parts = line.split()
        name = parts[0]
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            self.turns.clear()
            print("[conversation cleared]", file=out)
        elif name == "/set" and len(parts) == 3 and parts[1] in SETTABLE:
            try:
                value = SETTABLE[parts[1]](parts[2])
            except ValueError:
                print(f"[{parts[1]} wants a {SETTABLE[parts[1]].__name__}, not {parts[2]!r}]", file=out)
                return True
            if out_of_range(parts[1], value):
                print(f"[{parts[1]}={parts[2]} is out of range] it {out_of_range(parts[1], value)}", file=out)
                return True
            setattr(self.settings, parts[1], value if value or parts[1] not in ("top_k",) else None)
            print(f"[{parts[1]} = {value}]", file=out)
        elif name == "/show":
            print(f"[{', '.join(f'{k}={getattr(self.settings, k)}' for k in SETTABLE)}]", file=out)
        else:
            print(HELP, file=out)
        return True


def out_of_range(name: str, value) -> str | None:
    """What is wrong with a value of the setting `name` (a NaN passes every comparison, so it is named); None: fine."""
    if name == "max_new_tokens" and value < 1:
        return "must be >= 1"
    if name == "top_k" and value < 0:
        return "must be >= 0 (0: off)"
    if name == "top_p" and not 0 < value <= 1:
        return "must be in (0, 1] (1: off)"
    if name == "temperature" and not (math.isfinite(value) and value >= 0):
        return "must be a number >= 0 (0: greedy)"
    if name == "seed" and not -2**63 <= value < 2**64:
        return "must fit in 64 bits"
    return None


def _until(tokens, stops: set[int]):
    for t in tokens:
        if t in stops:
            return
        yield t


class _Holdback:
    """Streams text but holds back a tail that may be the start of `stop` (a base model's next "User:")."""

    def __init__(self, out, stop: str | None):
        self.out, self.stop, self.sent, self.buffer, self.stopped = out, stop, "", "", False

    def write(self, piece: str) -> None:
        if self.stopped:
            return
        self.buffer += piece
        if self.stop and self.stop in self.buffer:
            self.buffer = self.buffer[:self.buffer.index(self.stop)]
            self.stopped = True
        keep = 0
        if self.stop and not self.stopped:
            keep = max((n for n in range(1, len(self.stop)) if self.buffer.endswith(self.stop[:n])), default=0)
        ready = self.buffer[:len(self.buffer) - keep]
        self.out.write(ready)
        self.out.flush()
        self.sent += ready
        self.buffer = self.buffer[len(ready):]

    def final(self) -> str:
        """The answer as shown. A held-back tail is only ever the start of the stop string (the model opening
        the next turn), so it is dropped."""
        return self.sent


def run(args: argparse.Namespace, stdin=None, out=None) -> int:
    stdin, out = stdin or sys.stdin, out or sys.stdout
    for name in SETTABLE:
        problem = out_of_range(name, getattr(args, name))
        if problem:
            raise LokiError(f"--{name.replace('_', '-')} {getattr(args, name)} is out of range: --max-new-tokens must be "
                            ">= 1, --temperature >= 0, --top-k >= 0, --top-p in (0, 1] and --seed fit in 64 bits")
    settings = GenerateConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k or None, top_p=args.top_p if args.top_p < 1 else None, seed=args.seed)
    chat = Chat.load(args.run_dir, settings)
    interactive = stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())

        style = "its chat template" if chat.template is not None else "a plain User/Assistant transcript"
        print(f"chatting with {args.run_dir} ({style}); /help for commands, Ctrl-D to leave", file=out)
    while True:
        try:
            line = input("> ") if interactive else stdin.readline()
        except EOFError:
            line = ""
        except KeyboardInterrupt:
            print("\n[Ctrl-C stops an answer; Ctrl-D or /quit leaves]", file=out)
            continue
        if not line:  # end of input
            if interactive:
                print(file=out)
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not chat.command(line, out):
                return 0
            continue
        if not interactive:
            print(f"> {line}", file=out)
        chat.answer(line, out)
