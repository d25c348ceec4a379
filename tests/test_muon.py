"""Tests for train.optimizer=muon (lokilm/train/optimizer.py): our split steps exactly as torch.optim.Muon and
AdamW called directly, its state round-trips, and FSDP is refused clearly."""

import copy

import pytest
import torch

from lokilm.config import load_config
from lokilm.errors import LokiError
from lokilm.model import Transformer
from lokilm.model.config import ModelConfig
from lokilm.train.optimizer import MuonAdamW, build_optimizer, set_lr

pytestmark = pytest.mark.usefixtures("one_thread")


def toy(**kw) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(ModelConfig(**{**dict(vocab_size=97, n_layer=2, n_head=4, d_model=32, d_ff=64, context_length=16,
                                          tie_embeddings=True), **kw}))
    m.init_weights()
    return m


def train_cfg(**kw):
    return load_config("configs/tiny.yaml", ["train.optimizer=muon", "train.lr=0.01", *[f"train.{k}={v}" for k, v in kw.items()]]).train


def steps(model, optimizers, n=4, lr=None):
    torch.manual_seed(1)
    for i in range(n):
        x = torch.randint(0, 97, (4, 16))
        model(x[:, :-1], x[:, 1:]).backward()
        for opt in optimizers:
            if lr is not None:
                set_lr(opt, lr * (i + 1))
            opt.step()
            opt.zero_grad()


@pytest.mark.parametrize("kw", [dict(), dict(share="ffn", share_lora_rank=2), dict(tie_embeddings=False, position="learned")])
def test_our_split_steps_exactly_as_torch_muon_and_adamw_called_directly(kw):
    t = train_cfg(muon_momentum=0.9, weight_decay=0.05)
    ours = toy(**kw)
    ref = copy.deepcopy(ours)
    ref.tie_weights()
    io = {id(p) for p in ref.io_parameters()}
    assert {id(ref.tok_embeddings.weight), id(ref.head.weight)} <= io
    hidden = [p for p in ref.parameters() if p.dim() == 2 and id(p) not in io]
    rest = [p for p in ref.parameters() if p.dim() != 2 or id(p) in io]
    muon = torch.optim.Muon(hidden, lr=t.lr, weight_decay=0.05, momentum=0.9, nesterov=True,
                            adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([{"params": [p for p in rest if p.dim() == 2], "weight_decay": 0.05},
                               {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                              lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    opt = build_optimizer(ours, t)
    assert isinstance(opt, MuonAdamW) and len(opt.param_groups) == 3
    steps(ours, [opt], lr=t.lr)
    steps(ref, [muon, adamw], lr=t.lr)
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(ours.layers[0].attn.q_proj.weight, toy(**kw).layers[0].attn.q_proj.weight)


def test_its_state_saves_and_loads_like_any_optimiser():
    t = train_cfg()
    a = toy()
    opt = build_optimizer(a, t)
    steps(a, [opt], n=2)
    b = copy.deepcopy(a)
    b.tie_weights()
    opt_b = build_optimizer(b, t)
    state = opt.state_dict()
    opt_b.load_state_dict(copy.deepcopy(state))
    assert opt_b.parts[0].state is opt_b.state and opt_b.parts[1].param_groups[0] is opt_b.param_groups[1]
    steps(a, [opt], n=2)
    steps(b, [opt_b], n=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_muon_under_fsdp_is_refused_clearly(tmp_path):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path}/store")
    try:
        m = toy()
        for layer in m.layers:
            fully_shard(layer)
        fully_shard(m)
        with pytest.raises(LokiError, match="does not run under FSDP yet"):
            build_optimizer(m, train_cfg())
    finally:
        dist.destroy_process_group()


def test_a_bad_muon_setting_is_refused():
    with pytest.raises(LokiError, match="train.optimizer: 'sgd' is not one of"):
        load_config("configs/tiny.yaml", ["train.optimizer=sgd"])
    with pytest.raises(LokiError, match="train.muon_momentum: must be in"):
        load_config("configs/tiny.yaml", ["train.muon_momentum=1.5"])
