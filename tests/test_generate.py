import pytest
import torch

from lokilm.config import GenerateConfig, ModelConfig
from lokilm.errors import LokiError
from lokilm.generate import generate_batch, generate_from_run, generate_ids, sample_next
from lokilm.model import Transformer
from lokilm.train.trainer import train


def test_greedy_and_truncations():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert int(sample_next(logits, 0.0, None, None)) == 1
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, 2, None, g)) for _ in range(200)}
    assert draws == {1, 3}  # top-k 2 keeps exactly the two best
    draws = {int(sample_next(logits, 1.0, None, 0.5, g)) for _ in range(200)}
    assert draws == {1}  # the best token alone covers more than half the mass
    draws = {int(sample_next(logits, 1.0, None, 0.9, g)) for _ in range(400)}
    assert draws == {1, 3, 2}  # 0.64 + 0.24 < 0.9 needs the third; the fourth (0.03) is cut


@pytest.mark.parametrize("position", ["alibi", "rope", "learned"])
def test_cached_generation_equals_recomputing_everything(position):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=64, context_length=40,
                      position=position)
    model = Transformer(cfg)
    model.init_weights()
    model.eval()
    prompt = [5, 17, 3, 42]
    settings = GenerateConfig(max_new_tokens=20, temperature=0.0)
    cached = list(generate_ids(model, prompt, settings, vocab_size=97))
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert cached == ids[len(prompt):]


def test_generation_stops_at_the_context_and_refuses_long_prompts():
    cfg = ModelConfig(vocab_size=50, n_layer=1, n_head=2, d_model=16, d_ff=32, context_length=12)
    model = Transformer(cfg)
    model.init_weights()
    out = list(generate_ids(model, [1, 2, 3], GenerateConfig(max_new_tokens=100, temperature=1.0), vocab_size=50))
    assert len(out) == 9
    with pytest.raises(LokiError, match="the prompt is 12 tokens, the model's context is 12"):
        list(generate_ids(model, list(range(12)), GenerateConfig(), vocab_size=50))


def test_generate_from_a_trained_run_streams_the_same_text(make_cfg, tmp_path):
    run = tmp_path / "gen"
    train(make_cfg(run, "train.max_steps=3"))
    pieces = []
    settings = GenerateConfig(max_new_tokens=30, temperature=0.9, seed=3)
    text = generate_from_run(run, "Fair is foul", settings, stream=pieces.append)
    assert "".join(pieces) == text and len(text) > 0
    assert generate_from_run(run, "Fair is foul", settings) == text  # same seed, same text


def _tiny(position, n_kv_head=2, context=40):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, n_layer=2, n_head=4, n_kv_head=n_kv_head, d_model=32, d_ff=64,
                      context_length=context, position=position)
    model = Transformer(cfg)
    model.init_weights()
    return model.eval()


PROMPTS = [[5, 17, 3, 42], [1], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27], [33, 34]]


@pytest.mark.parametrize("position,kv", [("alibi", 2), ("rope", 2), ("learned", None), ("rope", None)])
def test_batched_generation_equals_each_prompt_alone(position, kv):
    """Left-padded prompts of different lengths: greedy rows are exactly their solo output (the long one runs
    into the context and stops early there); sampled rows too, each with its own generator."""
    model = _tiny(position, kv)
    for settings in (GenerateConfig(max_new_tokens=25, temperature=0.0), GenerateConfig(max_new_tokens=25, seed=3)):
        alone = [list(generate_ids(model, p, settings, vocab_size=90)) for p in PROMPTS]
        together = generate_batch(model, PROMPTS, settings, vocab_size=90)
        assert together == alone
        assert [len(a) for a in alone] == [25, 25, 20, 25] and max(max(a) for a in alone) < 90


def test_batched_rows_stop_on_their_own():
    model = _tiny("alibi")
    settings = GenerateConfig(max_new_tokens=15, temperature=0.0)
    free = generate_batch(model, PROMPTS, settings, vocab_size=97)
    stop = free[0][3]  # the first row's fourth token ends that row (and any other row that makes it)
    stopped = generate_batch(model, PROMPTS, settings, vocab_size=97, stop_id=stop)
    for row, full in zip(stopped, free):
        assert row == (full[:full.index(stop)] if stop in full else full)
    cut = generate_batch(model, PROMPTS, settings, vocab_size=97, finished=lambda b, new: b == 1 and len(new) == 2)
    assert cut[1] == free[1][:2] and cut[0] == free[0]


def test_generate_until_batches_equal_one_by_one(small_tokenizer):
    """The harness decodes generate_until requests together; each answer is the one-by-one greedy answer."""
    from lm_eval.api.instance import Instance

    from lokilm.eval.harness import LokiLM

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=512, n_layer=2, n_head=4, d_model=32, d_ff=64, context_length=64,
                                    position="rope"))
    model.init_weights()
    questions = ["Question: Who killed Duncan?\nAnswer:", "Question: Where?\nAnswer:", "Fair is foul"]
    reqs = [Instance("generate_until", {}, (q, {"until": ["\n\n", "e"], "max_gen_toks": 10}), i)
            for i, q in enumerate(questions)]
    batched = LokiLM(model, small_tokenizer, batch_size=8).generate_until(reqs)
    single = [LokiLM(model, small_tokenizer, batch_size=1).generate_until([r])[0] for r in reqs]
    assert batched == single and all("e" not in t for t in batched)
