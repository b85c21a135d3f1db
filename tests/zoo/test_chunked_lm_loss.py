"""The chunked linear + cross-entropy of the LM loss: equal loss and gradients to the plain one-shot computation
(``chunk_size=None``), rows independent, the global normalisation unchanged, and never an [N, V] tensor."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import zoo.losses.language as language
from zoo.losses import causal_lm_loss, linear_cross_entropy, sequence_nll

B, L, D, V = 4, 9, 6, 23


def _problem(bias: bool = True):
    torch.manual_seed(0)
    hidden = torch.randn(B, L, D, requires_grad=True)
    labels = torch.randint(0, V, (B, L))
    labels[torch.rand(B, L) < 0.3] = -100
    labels[1, 1:] = -100  # row 1: nothing supervised (its label at position 0 is never a target)
    labels[1, 0] = 5
    labels[3] = torch.randint(0, V, (L,))  # row 3: everything
    head = torch.nn.Linear(D, V, bias=bias)
    return hidden, labels, head


def _grads(loss, tensors):
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, torch.autograd.grad(loss, tensors))]


def _row_weighted(hidden, labels, head, chunk_size):
    """Different weights per row, so each token's incoming gradient differs (as in VladVA's use)."""
    total, count = sequence_nll(hidden, labels, head.weight, head.bias, chunk_size=chunk_size)
    weights = torch.arange(1.0, B + 1)
    return (total * weights).sum(), total, count


N_SUPERVISED = int((_problem()[1][:, 1:] != -100).sum())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 5, 2 * N_SUPERVISED, 1024])  # 5 does not divide N; 2N exceeds it
@pytest.mark.parametrize("loss_fn", ["causal_lm_loss", "row_weighted"])
def test_loss_and_gradients_equal_the_plain_computation(chunk_size, bias, loss_fn):
    assert N_SUPERVISED % 5 != 0
    hidden, labels, head = _problem(bias)
    tensors = [hidden, *head.parameters()]
    results = []
    for size in [None, chunk_size]:
        if loss_fn == "causal_lm_loss":
            loss = causal_lm_loss(hidden, labels, head.weight, head.bias, chunk_size=size)["lm_loss"]
        else:
            loss = _row_weighted(hidden, labels, head, size)[0]
        results.append([loss.detach(), *_grads(loss, tensors)])
    assert len(results[0]) == (4 if bias else 3)
    for got, expected in zip(results[1], results[0]):
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert results[0][1][1].abs().sum() == 0  # row 1 has no target: no gradient reaches its hidden states


def test_non_contiguous_hidden_and_hidden_without_grad():
    torch.manual_seed(1)
    hidden = torch.randn(D, 37).T  # [37, D], not contiguous
    targets = torch.randint(0, V, (37,))
    head = torch.nn.Linear(D, V)
    expected = F.cross_entropy(head(hidden.contiguous()), targets, reduction="none")
    expected_grads = _grads(expected.sum(), list(head.parameters()))
    got = linear_cross_entropy(hidden, targets, head.weight, head.bias, chunk_size=8)
    assert torch.allclose(got, expected, atol=1e-6)
    for a, b in zip(_grads(got.sum(), list(head.parameters())), expected_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_no_supervised_token_gives_zero_loss_and_zero_gradients():
    hidden, labels, head = _problem()
    labels[:] = -100
    for chunk_size in [None, 4]:
        loss = causal_lm_loss(hidden, labels, head.weight, head.bias, chunk_size=chunk_size)["lm_loss"]
        grads = torch.autograd.grad(loss, [hidden, head.weight, head.bias])
        assert loss.item() == 0
        for grad in grads:
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() == 0
        total, count = sequence_nll(hidden, labels, head.weight, head.bias, chunk_size=chunk_size)
        assert total.tolist() == [0.0] * B and count.tolist() == [0] * B


class _Shapes(TorchDispatchMode):
    """The shapes of every tensor each op creates (forward and backward ops alike)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, tuple | list) else [out]
        self.shapes += [tuple(o.shape) for o in outs if isinstance(o, torch.Tensor)]
        return out


def test_frozen_head_gets_no_gradient_computed():
    hidden, labels, head = _problem()
    head.requires_grad_(False)
    expected = _grads(causal_lm_loss(hidden, labels, head.weight, head.bias, chunk_size=None)["lm_loss"], [hidden])
    loss = causal_lm_loss(hidden, labels, head.weight, head.bias, chunk_size=4)["lm_loss"]
    with _Shapes() as backward:
        got = _grads(loss, [hidden])
    assert torch.allclose(got[0], expected[0], atol=1e-5)
    assert (V, D) not in backward.shapes and (V,) not in backward.shapes  # no weight or bias gradient made
    assert head.weight.grad is None


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_rows_are_independent(chunk_size):
    hidden, labels, head = _problem()
    _, total, count = _row_weighted(hidden, labels, head, chunk_size)
    for row in range(B):
        alone, alone_count = sequence_nll(
            hidden[row : row + 1], labels[row : row + 1], head.weight, head.bias, chunk_size=chunk_size
        )
        assert torch.allclose(alone, total[row : row + 1], atol=1e-6) and alone_count == count[row]
    logits = head(hidden)
    for row in range(B):  # each row's sum by hand
        terms = [F.cross_entropy(logits[row, t - 1], labels[row, t], reduction="sum") for t in range(1, L)
                 if labels[row, t] != -100]  # fmt: skip
        assert torch.allclose(total[row], torch.stack(terms).sum() if terms else torch.tensor(0.0), atol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_distributed_normalisation_is_unchanged(monkeypatch, chunk_size):
    """Two ranks, the other holding 17 supervised tokens: Σ_local CE · world / N_global."""
    hidden, labels, head = _problem()
    monkeypatch.setattr(language, "world_size", lambda: 2)
    monkeypatch.setattr(language, "all_reduce_sum", lambda x: x + 17)
    logits = head(hidden)[:, :-1].reshape(-1, V)
    local = F.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
    expected = local * 2 / (N_SUPERVISED + 17)
    got = causal_lm_loss(hidden, labels, head.weight, head.bias, chunk_size=chunk_size)["lm_loss"]
    assert torch.allclose(got, expected, atol=1e-6)


def test_low_precision_hidden_and_autocast():
    """bf16 inputs: float32 logits per chunk, gradients in the inputs' dtype, close to the float32 values.
    Under CPU autocast (float32 parameters): gradients in float32, equal to the plain path's within bf16."""
    hidden, labels, head = _problem()
    reference = causal_lm_loss(hidden, labels, head.weight, head.bias, chunk_size=None)["lm_loss"]
    ref_grads = _grads(reference, [hidden, head.weight, head.bias])
    low = [t.detach().bfloat16().requires_grad_() for t in [hidden, head.weight, head.bias]]
    loss = causal_lm_loss(low[0], labels, low[1], low[2], chunk_size=4)["lm_loss"]
    assert loss.dtype == torch.float32 and torch.allclose(loss, reference, atol=2e-2)
    for got, expected in zip(_grads(loss, low), ref_grads):
        assert got.dtype == torch.bfloat16 and torch.allclose(got.float(), expected, atol=2e-2)
    losses = []
    for chunk_size in [None, 4]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses.append(causal_lm_loss(hidden, labels, head.weight, head.bias, chunk_size=chunk_size)["lm_loss"])
        grads = _grads(losses[-1], [hidden, head.weight, head.bias])
        assert all(g.dtype == torch.float32 for g in grads)
        for got, expected in zip(grads, ref_grads):
            assert torch.allclose(got, expected, atol=2e-2)
    assert torch.allclose(losses[0], losses[1], atol=1e-5)  # the same bf16 logits, chunked or not


def test_chunked_path_never_creates_a_tokens_by_vocabulary_tensor():
    """Plain: the [N, V] logits in the forward and their gradient in the backward. Chunked: nothing larger than
    [chunk, V] (the other tensors here, [B, L, D] and [V, D], are smaller), forward and backward alike."""
    torch.manual_seed(0)
    batch, length, dim, vocab, chunk = 4, 33, 6, 64, 16
    hidden = torch.randn(batch, length, dim, requires_grad=True)
    labels = torch.randint(0, vocab, (batch, length))
    head = torch.nn.Linear(dim, vocab)
    n = (labels[:, 1:] != -100).sum().item()
    assert max(batch * length * dim, vocab * dim) <= chunk * vocab < n * vocab
    largest = {}
    for chunk_size in [None, chunk]:
        with _Shapes() as forward:
            loss = causal_lm_loss(hidden, labels, head.weight, head.bias, chunk_size=chunk_size)["lm_loss"]
        with _Shapes() as backward:
            loss.backward()
        largest[chunk_size] = [max(torch.Size(s).numel() for s in mode.shapes) for mode in (forward, backward)]
    assert largest[None] == [n * vocab, n * vocab]
    assert max(largest[chunk]) <= chunk * vocab


def test_chunk_size_must_be_positive():
    hidden, labels, head = _problem()
    with pytest.raises(ValueError, match="chunk_size"):
        causal_lm_loss(hidden, labels, head.weight, head.bias, chunk_size=0)
