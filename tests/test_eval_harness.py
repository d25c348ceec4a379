"""The lm-eval adapter: its log-likelihoods equal a direct forward pass, batched or not, on exactly the
continuation's tokens; rolling log-likelihood and greedy generation agree with lokilm's own code."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance

from lokilm.config import GenerateConfig, load_config
from lokilm.eval.harness import LokiLM
from lokilm.generate import generate_ids
from lokilm.model import Transformer
from lokilm.tokenizer import decode, encode, eot_id

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [
    ("Question: What is the capital of Scotland?\nAnswer:", " Edinburgh"),
    ("Thou art ", "a villain, my lord."),  # trailing space moves into the continuation
    ("", "Fair is foul, and foul is fair."),  # no context: scored after EOT alone
    ("MACBETH. " * 40, " So foul and fair a day I have not seen."),  # longer than the context: cut on the left
    ("The witches", " vanish"),
    ("Which play is this?\nAnswer:", " A"),  # one-token answers to one question share a forward pass
    ("Which play is this?\nAnswer:", " B"),
]


@pytest.fixture(scope="module")
def lm_parts(small_tokenizer):
    torch.manual_seed(0)
    cfg = load_config("configs/tiny.yaml", ["model.vocab_size=512", "model.n_layer=2", "model.d_model=64",
                                            "model.n_head=2", "model.d_ff=128", "model.context_length=64"])
    model = Transformer(cfg.model)
    model.init_weights()
    return model.eval(), small_tokenizer


def _direct(model, tok, context: str, continuation: str) -> tuple[float, bool, list[int]]:
    """log p(continuation | EOT + context) from one plain forward pass over the whole sequence."""
    n_spaces = len(context) - len(context.rstrip())
    ctx_text = context[:len(context) - n_spaces]
    whole = encode(tok, ctx_text + context[len(ctx_text):] + continuation)
    ctx_ids = encode(tok, ctx_text)
    cont = whole[len(ctx_ids):]
    tokens = ([eot_id(tok)] + whole)[-(model.cfg.context_length + 1):]
    with torch.no_grad():
        logits = model(torch.tensor([tokens[:-1]]))[0]
    logp = F.log_softmax(logits.float()[:, :tok.get_vocab_size()], dim=-1)
    targets = torch.tensor(tokens[1:])
    picked = logp[-len(cont):].gather(1, targets[-len(cont):, None]).squeeze(1)
    greedy = bool((logp[-len(cont):].argmax(-1) == targets[-len(cont):]).all())
    return float(picked.sum()), greedy, cont


def _requests(pairs):
    return [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=0) for p in pairs]


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_loglikelihood_equals_direct_forward_pass(lm_parts, batch_size):
    model, tok = lm_parts
    lm = LokiLM(model, tok, batch_size=batch_size)
    got = lm.loglikelihood(_requests(PAIRS))
    for (context, continuation), (ll, greedy) in zip(PAIRS, got):
        want_ll, want_greedy, _ = _direct(model, tok, context, continuation)
        assert ll == pytest.approx(want_ll, rel=1e-5, abs=1e-4), (context[:30], continuation)
        assert greedy == want_greedy


def test_the_continuation_tokens_are_exactly_the_ones_scored(lm_parts, monkeypatch):
    model, tok = lm_parts
    lm = LokiLM(model, tok)
    seen = []
    real_score = lm.score
    monkeypatch.setattr(lm, "score", lambda pairs: seen.extend(pairs) or real_score(pairs))
    lm.loglikelihood(_requests(PAIRS))
    assert len(seen) == len(PAIRS)
    for (context, continuation), (ctx_ids, cont_ids) in zip(PAIRS, seen):
        assert ctx_ids[0] == eot_id(tok)  # every document starts after EOT, as in training
        assert decode(tok, ctx_ids[1:] + cont_ids) == context + continuation
        assert cont_ids == _direct(model, tok, context, continuation)[2]
        # the scored text is the continuation (with the context's trailing spaces moved in front)
        assert decode(tok, cont_ids).endswith(continuation)


def test_rolling_loglikelihood_of_a_short_text_is_its_full_likelihood(lm_parts):
    model, tok = lm_parts
    lm = LokiLM(model, tok)
    text = "Double, double toil and trouble."
    (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert rolling == pytest.approx(_direct(model, tok, "", text)[0], rel=1e-5)
    # a text longer than the context is scored in windows that together cover every token once
    long_text = "Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace from day to day. " * 6
    lm.batch_size = 2
    (long_ll,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (long_text,), 0)])
    assert len(encode(tok, long_text)) > model.cfg.context_length and long_ll < rolling


def test_generate_until_is_greedy_kv_cache_generation_cut_at_the_stop_string(lm_parts):
    model, tok = lm_parts
    lm = LokiLM(model, tok)
    prompt = "Question: Who killed Duncan?\nAnswer:"
    (out,) = lm.generate_until([Instance("generate_until", {}, (prompt, {"until": ["\n\n"], "max_gen_toks": 20}), 0)])
    ids = [eot_id(tok)] + encode(tok, prompt)
    settings = GenerateConfig(max_new_tokens=20, temperature=0.0, top_k=None)
    full = decode(tok, generate_ids(model, ids, settings, tok.get_vocab_size(), stop_id=eot_id(tok)))
    assert out == full.split("\n\n")[0]


def _reference_score(model, pairs):
    """What LokiLM.score computes, written out: one plain forward per pair over its whole (left-cut) sequence."""
    out = []
    for context, continuation in pairs:
        tokens = (context + continuation)[-(model.cfg.context_length + 1):]
        n = min(len(continuation), len(tokens) - 1)
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([tokens[:-1]]))[0].float(), dim=-1)[-n:]
        target = torch.tensor(tokens[-n:])
        out.append((float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())))
    return out


def _greedy(model, context, n):
    ids = list(context)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(context):]


@pytest.mark.parametrize("model_options", [["model.position=alibi"], ["model.position=rope"],
                                           ["model.position=learned", "model.tie_embeddings=false"],
                                           ["model.position=sincos"], ["model.early_exit=true"],
                                           ["model.share=block", "model.share_lora_rank=4"]])
@pytest.mark.parametrize("batch_size, max_tokens", [(32, None), (3, 40)])
def test_score_equals_one_plain_forward_per_pair(small_tokenizer, model_options, batch_size, max_tokens):
    torch.manual_seed(0)
    cfg = load_config("configs/tiny.yaml", ["model.vocab_size=512", "model.n_layer=2", "model.d_model=64",
                                            "model.n_head=4", "model.n_kv_head=2", "model.d_ff=128",
                                            "model.context_length=64", *model_options])
    model = Transformer(cfg.model)
    model.init_weights()
    model.eval()
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(1, 512, (n,), generator=g).tolist()

    pairs = []
    for n_context in (1, 5, 17, 40, 63, 90):  # the last ones are cut on the left, by how much depends on the choice
        context = ids(n_context)
        pairs += [(context, ids(k)) for k in (1, 1, 4, 9, 2)]  # one item's choices: one-token and longer
        pairs.append((context, _greedy(model, context[-59:], 6)))  # what greedy decoding gives (after the cut)
    pairs += [(ids(3), ids(70)), ([0], ids(64)), (ids(64), ids(1)), (ids(20), ids(2))]  # longer than the context
    lm = LokiLM(model, small_tokenizer, batch_size=batch_size, max_tokens=max_tokens)
    got, want = lm.score(pairs), _reference_score(model, pairs)
    assert sum(w[1] for w in want) >= 6  # the greedy flags are really tested both ways
    for (ll, greedy), (want_ll, want_greedy) in zip(got, want):
        assert ll == pytest.approx(want_ll, abs=1e-4)
        assert greedy == want_greedy


def test_choices_read_their_shared_context_once_and_the_head_sees_only_scored_positions(lm_parts):
    model, tok = lm_parts
    seen = {"body": 0, "head": 0}

    def counter(key, positions):
        return lambda module, args, out: seen.__setitem__(key, seen[key] + positions(args[0]))

    hooks = [model.tok_embeddings.register_forward_hook(counter("body", lambda ids: ids.numel())),
             model.head.register_forward_hook(counter("head", lambda h: h.shape[:-1].numel()))]
    context = list(range(1, 41))
    choices = [[50], [60, 61, 62], [70, 71, 72, 73, 74], [80, 81]]
    try:
        LokiLM(model, tok).score([(context, c) for c in choices])
    finally:
        for h in hooks:
            h.remove()
    # the context once, then the three longer choices' tokens but the last, right-padded to the longest (4)
    assert seen["body"] == 40 + 3 * 4
    assert seen["head"] == 1 + 3 * 4


def test_the_byte_level_model_is_refused_with_a_clear_error(small_tokenizer):
    from lokilm.errors import LokiError
    from lokilm.model.config import ModelConfig

    cfg = ModelConfig(vocab_size=512, n_layer=1, n_head=2, d_model=48, d_ff=96, context_length=64, input="bytes",
                      byte_context=16, byte_d_model=32, byte_n_head=2, byte_n_layer=1)
    with pytest.raises(LokiError, match="no token logits"):
        LokiLM(Transformer(cfg), small_tokenizer)
