"""The masked causal-LM loss: shifted targets, supervised positions only, global token mean (ranks and
accumulated micro-batches)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.conftest import free_port
from zoo.losses import causal_lm_loss, supervised_token_count

B, L, D, V = 4, 7, 6, 11


def _problem():
    torch.manual_seed(0)
    hidden_in = torch.randn(2 * B, L, D)
    labels = torch.randint(0, V, (2 * B, L))
    labels[torch.rand(2 * B, L) < 0.4] = -100
    labels[0, 1:] = -100  # row 0: nothing supervised; row 5: everything
    labels[0, 3] = 17 % V
    labels[5] = torch.randint(0, V, (L,))
    body, head = torch.nn.Linear(D, D), torch.nn.Linear(D, V)
    return hidden_in, labels, body, head


def _loss_and_grads(hidden_in, labels, body, head, count=None):
    loss = causal_lm_loss(body(hidden_in), labels, head.weight, head.bias, count)["lm_loss"]
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in [*body.parameters(), *head.parameters()]]


def test_mean_over_supervised_next_tokens_by_hand():
    hidden_in, labels, body, head = _problem()
    logits = head(body(hidden_in))
    terms = [
        F.cross_entropy(logits[b, t - 1], labels[b, t], reduction="sum")
        for b in range(2 * B)
        for t in range(1, L)
        if labels[b, t] != -100
    ]
    expected = torch.stack(terms).mean()
    got = causal_lm_loss(body(hidden_in), labels, head.weight, head.bias)["lm_loss"]
    assert torch.allclose(got, expected, atol=1e-6)
    # the label at position 0 is never a target (nothing predicts it)
    changed = labels.clone()
    changed[:, 0] = 3
    assert torch.allclose(causal_lm_loss(body(hidden_in), changed, head.weight, head.bias)["lm_loss"], expected)


def test_equals_plain_cross_entropy_of_full_logits():
    """HF's loss: CE(logits[:, :-1], labels[:, 1:]) with ignore_index -100, mean over the batch's tokens."""
    hidden_in, labels, body, head = _problem()
    logits = head(body(hidden_in))
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    got = causal_lm_loss(body(hidden_in), labels, head.weight, head.bias)["lm_loss"]
    assert torch.allclose(got, expected, atol=1e-6)


def test_accumulated_micro_batches_equal_one_batch():
    hidden_in, labels, body, head = _problem()
    loss, grads = _loss_and_grads(hidden_in, labels, body, head)
    body.zero_grad(), head.zero_grad()
    halves = [slice(0, 3), slice(3, 2 * B)]  # unequal micro-batches with unequal token counts
    count = supervised_token_count([labels[h] for h in halves])
    total = sum(_loss_and_grads(hidden_in[h], labels[h], body, head, count)[0] for h in halves)
    got = [p.grad for p in [*body.parameters(), *head.parameters()]]
    assert torch.allclose(total, loss, atol=1e-6)
    for a, b in zip(got, grads):
        assert torch.allclose(a, b, atol=1e-6)


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    hidden_in, labels, body, head = _problem()
    rows = slice(rank * B, (rank + 1) * B)
    loss, grads = _loss_and_grads(hidden_in[rows], labels[rows], body, head)
    for grad in grads:  # what DDP does with the gradients
        dist.all_reduce(grad)
        grad /= 2
    dist.all_reduce(loss)  # what a synced log does: the mean over ranks
    torch.save({"loss": loss / 2, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    """Rank 0 holds fewer supervised tokens than rank 1: a mean of per-rank means would differ."""
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    loss, grads = _loss_and_grads(*_problem())
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(result["loss"], loss, atol=1e-6)
        for got, expected in zip(result["grads"], grads):
            assert torch.allclose(got, expected, atol=1e-6)
