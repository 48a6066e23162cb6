import pytest
import torch

from seqlib.models.feedforward import BigramLM, FixedWindowLM, bigram_counts


def test_bigram_counts_match_a_python_count():
    tokens = torch.tensor([0, 1, 1, 2, 0, 1, 2, 2, 2])
    expected = torch.zeros(3, 3, dtype=torch.long)
    for a, b in zip(tokens[:-1].tolist(), tokens[1:].tolist()):
        expected[a, b] += 1
    assert torch.equal(bigram_counts(tokens, 3), expected)


def test_from_counts_gives_smoothed_maximum_likelihood_probabilities():
    tokens = torch.tensor([0, 1, 1, 2, 0, 1])
    model = BigramLM.from_counts(tokens, 3, smoothing=0.5)
    probs = model.logits.detach().double().softmax(-1)
    # row 1 saw 1 -> 1 once and 1 -> 2 once: (0.5, 1.5, 1.5) / 3.5
    assert torch.allclose(probs[1], torch.tensor([0.5, 1.5, 1.5], dtype=torch.double) / 3.5,
                          atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(3, dtype=torch.double))


def test_gradient_training_reaches_the_count_solution(generator):
    tokens = torch.randint(0, 5, (4000,), generator=generator)
    counted = BigramLM.from_counts(tokens, 5, smoothing=1e-3)
    trained = BigramLM(5)
    x, y = tokens[:-1][None], tokens[1:][None]
    opt = torch.optim.Adam(trained.parameters(), lr=0.1)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(trained(x)[0], y[0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(trained.logits.softmax(-1), counted.logits.softmax(-1), atol=2e-2)


@pytest.mark.parametrize("make", [lambda: BigramLM(7), lambda: FixedWindowLM(7, 3, 4, 8)])
def test_step_equals_forward(make, generator):
    torch.manual_seed(0)
    model = make()
    x = torch.randint(0, 7, (2, 11), generator=generator)
    full = model(x)
    state = model.init_state(2)
    for t in range(x.shape[1]):
        logits, state = model.step(x[:, t], state)
        assert torch.allclose(logits, full[:, t], atol=1e-5), t
    assert full.shape == (2, 11, 7)


def test_step_does_not_mutate_its_state():
    model = FixedWindowLM(5, 3)
    state = model.init_state(1)
    kept = state.clone()
    model.step(torch.tensor([2]), state)
    assert torch.equal(state, kept)


def test_fixed_window_sees_exactly_k_tokens(generator):
    torch.manual_seed(0)
    model = FixedWindowLM(6, context=2, d_embed=3, d_hidden=5)
    x = torch.randint(0, 6, (1, 8), generator=generator)
    changed = x.clone()
    changed[0, 2] = (x[0, 2] + 1) % 6
    diff = (model(x) - model(changed)).abs().amax(-1)[0]
    # position 2 is inside the windows of positions 2 and 3 only
    assert (diff[[2, 3]] > 0).all() and (diff[[0, 1, 4, 5, 6, 7]] == 0).all()


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([[0, 9]]), "expected ids in"),
    (torch.tensor([0, 1]), "shape (b, l)"),
    (torch.tensor([[0.0, 1.0]]), "integer token ids"),
])
def test_bad_input_names_the_argument(bad, message):
    with pytest.raises(ValueError, match=rf"x .*{message}".replace("(", r"\(").replace(")", r"\)")):
        BigramLM(4)(bad)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        BigramLM(0)
    with pytest.raises(ValueError, match="context"):
        FixedWindowLM(4, 0)
    with pytest.raises(ValueError, match="smoothing"):
        BigramLM.from_counts([0, 1], 2, smoothing=0)
