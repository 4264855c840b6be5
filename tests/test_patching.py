"""mikit.patching: the batched engine agrees with transformer_lens.patching and with hand-checkable cases."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens import patching as tl_patching

from mikit import patching


def tiny_model(n_key_value_heads=None) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=16, act_fn="gelu",
        normalization_type="LN", n_key_value_heads=n_key_value_heads, seed=0, device="cpu",
    )
    return HookedTransformer(cfg).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def tokens():
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50, (3, 6), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.randint(0, 50, (3,), generator=generator)
    corrupted[:, 3] = torch.randint(0, 50, (3,), generator=generator)
    return clean, corrupted


def metric(logits):
    return logits[:, -1, 7].mean() - logits[:, -1, 3].mean()


PEERS = [
    ("resid_pre", lambda m, c, x, **kw: patching.patch_residual(m, c, x, metric, "resid_pre", progress=False, **kw),
     tl_patching.get_act_patch_resid_pre),
    ("attn_out", lambda m, c, x, **kw: patching.patch_residual(m, c, x, metric, "attn_out", progress=False, **kw),
     tl_patching.get_act_patch_attn_out),
    ("mlp_out", lambda m, c, x, **kw: patching.patch_residual(m, c, x, metric, "mlp_out", progress=False, **kw),
     tl_patching.get_act_patch_mlp_out),
    ("head out", lambda m, c, x, **kw: patching.patch_head_out(m, c, x, metric, progress=False, **kw),
     tl_patching.get_act_patch_attn_head_out_all_pos),
    ("head out by pos", lambda m, c, x, **kw: patching.patch_head_out(m, c, x, metric, by_position=True, progress=False, **kw),
     tl_patching.get_act_patch_attn_head_out_by_pos),
    ("pattern", lambda m, c, x, **kw: patching.patch_head_pattern(m, c, x, metric, progress=False, **kw),
     tl_patching.get_act_patch_attn_head_pattern_all_pos),
    ("values", lambda m, c, x, **kw: patching.patch_head_values(m, c, x, metric, progress=False, **kw),
     tl_patching.get_act_patch_attn_head_v_all_pos),
]


@pytest.mark.parametrize("name,ours,peer", PEERS, ids=[p[0] for p in PEERS])
def test_denoising_matches_transformer_lens(model, tokens, name, ours, peer):
    clean, corrupted = tokens
    _, clean_cache = model.run_with_cache(clean)
    want = peer(model, corrupted, clean_cache, metric)
    got = ours(model, clean, corrupted)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want.float(), atol=1e-4, rtol=0)
    assert got.abs().max() > 1e-3  # the case is not trivially zero


def test_noising_patches_corrupted_activations_into_the_clean_run(model, tokens):
    clean, corrupted = tokens
    _, corrupted_cache = model.run_with_cache(corrupted)
    want = tl_patching.get_act_patch_attn_head_out_all_pos(model, clean, corrupted_cache, metric)
    got = patching.patch_head_out(model, clean, corrupted, metric, direction="noise", progress=False)
    torch.testing.assert_close(got, want.float(), atol=1e-4, rtol=0)


def test_batched_equals_one_patch_per_pass(model, tokens):
    clean, corrupted = tokens
    one = patching.patch_head_out(model, clean, corrupted, metric, by_position=True, batch_size=1, progress=False)
    many = patching.patch_head_out(model, clean, corrupted, metric, by_position=True, batch_size=10_000, progress=False)
    odd = patching.patch_head_out(model, clean, corrupted, metric, by_position=True, batch_size=7, progress=False)
    torch.testing.assert_close(many, one, atol=1e-5, rtol=0)
    torch.testing.assert_close(odd, one, atol=1e-5, rtol=0)


def test_patching_a_one_token_stream_restores_the_clean_run(model):
    # With a single position, the residual stream at any layer is the whole state: patching it
    # gives exactly the clean metric, and patching a position that did not change gives the corrupted one.
    clean, corrupted = torch.tensor([[5], [9]]), torch.tensor([[6], [2]])
    got = patching.patch_residual(model, clean, corrupted, metric, "resid_pre", progress=False)
    with torch.no_grad():
        want = metric(model(clean)).item()
    assert got.shape == (3, 1)
    torch.testing.assert_close(got, torch.full((3, 1), want), atol=1e-5, rtol=0)
    same = torch.tensor([[5, 8], [9, 8]]), torch.tensor([[6, 8], [2, 8]])
    with torch.no_grad():
        corrupted_metric = metric(model(same[1])).item()
    # position 0 of layer 0 carries the only difference; position 1 at layer 0 is identical in both runs
    assert patching.patch_residual(model, *same, metric, progress=False)[0, 1].item() == pytest.approx(corrupted_metric, abs=1e-5)


def test_grouped_query_values_have_one_entry_per_value_head(tokens):
    gqa = tiny_model(n_key_value_heads=2)
    clean, corrupted = tokens
    got = patching.patch_head_values(gqa, clean, corrupted, metric, progress=False)
    assert got.shape == (3, 2)
    one = patching.patch_head_values(gqa, clean, corrupted, metric, batch_size=1, progress=False)
    torch.testing.assert_close(got, one, atol=1e-5, rtol=0)


def test_bad_input_gets_one_sentence(model, tokens):
    clean, corrupted = tokens
    with pytest.raises(ValueError, match="same shape"):
        patching.patch_head_out(model, clean, corrupted[:, :4], metric)
    with pytest.raises(ValueError, match="direction must be"):
        patching.patch_head_out(model, clean, corrupted, metric, direction="backwards")
    with pytest.raises(ValueError, match="component must be"):
        patching.patch_residual(model, clean, corrupted, metric, "resid_post")


def test_a_sweep_restricted_to_some_layers(model, tokens):
    clean, corrupted = tokens
    full = patching.patch_head_out(model, clean, corrupted, metric, progress=False)
    some = patching.patch_head_out(model, clean, corrupted, metric, layers=[2, 0], progress=False)
    assert torch.isnan(some[1]).all()
    torch.testing.assert_close(some[[0, 2]], full[[0, 2]], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="layers must be layer numbers from 0 to 2"):
        patching.patch_head_out(model, clean, corrupted, metric, layers=[3])


@pytest.mark.parametrize("name,ours,peer", PEERS, ids=[p[0] for p in PEERS])
def test_nnsight_backend_gives_the_same_numbers(model, tokens, name, ours, peer):
    clean, corrupted = tokens
    tl = ours(model, clean, corrupted)
    nnsight = ours(model, clean, corrupted, backend="nnsight", batch_size=7)
    torch.testing.assert_close(nnsight, tl, atol=1e-4, rtol=0)


def test_remote_reaches_the_nnsight_trace(model, tokens, monkeypatch):
    import nnsight

    calls = []

    class Recorded(Exception):
        pass

    class FakeNNsight:
        def __init__(self, module):
            self.module = module

        def trace(self, *args, **kwargs):
            calls.append(kwargs)
            raise Recorded

    monkeypatch.setattr(nnsight, "NNsight", FakeNNsight)
    clean, corrupted = tokens
    with pytest.raises(Recorded):
        patching.patch_head_out(model, clean, corrupted, metric, backend="nnsight", remote=True, progress=False)
    assert calls[0]["remote"] is True and calls[0]["start_at_layer"] == 0
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted)
    with pytest.raises(Recorded):
        patching.path_patch(model, clean_cache, corrupted_cache, metric, [(0, 1)], [(2, 0)], backend="nnsight", remote=True)
    assert calls[1]["remote"] is True
    with pytest.raises(Recorded):
        patching.attribution_patch(model, clean, corrupted, metric, backend="nnsight", remote=True)
    assert calls[2]["remote"] is True
    with pytest.raises(ValueError, match="backend='nnsight'"):
        patching.patch_head_out(model, clean, corrupted, metric, remote=True)
    with pytest.raises(ValueError, match="backend must be"):
        patching.patch_head_out(model, clean, corrupted, metric, backend="pyvene")


def test_attribution_patching_approximates_real_patching(model, tokens):
    clean, corrupted = tokens
    for kwargs, sweep in [
        ({}, lambda: patching.patch_head_out(model, clean, corrupted, metric, progress=False)),
        ({"by_position": True}, lambda: patching.patch_head_out(model, clean, corrupted, metric, by_position=True, progress=False)),
        ({"activation": "resid_pre"}, lambda: patching.patch_residual(model, clean, corrupted, metric, progress=False)),
    ]:
        real, estimate = sweep(), patching.attribution_patch(model, clean, corrupted, metric, **kwargs)
        assert estimate.shape == real.shape
        corr = torch.corrcoef(torch.stack([estimate.flatten(), real.flatten()]))[0, 1]
        print(f"attribution vs activation patching {kwargs}: r = {corr:.3f}")
        assert corr > 0.8, (kwargs, corr)  # first-order estimate on a random model: measured 0.85-0.94


@pytest.mark.parametrize("kwargs", [{}, {"by_position": True}, {"activation": "resid_pre"}, {"activation": "pattern"},
                                    {"direction": "noise"}], ids=["z", "z by position", "resid_pre", "pattern", "noise"])
def test_attribution_patching_with_nnsight_gives_the_same_numbers(model, tokens, kwargs):
    clean, corrupted = tokens
    tl = patching.attribution_patch(model, clean, corrupted, metric, **kwargs)
    nnsight = patching.attribution_patch(model, clean, corrupted, metric, backend="nnsight", **kwargs)
    torch.testing.assert_close(nnsight, tl, atol=1e-5, rtol=0)
    assert all(p.grad is None for p in model.parameters())  # no gradients left on the weights


def test_attribution_patching_of_patterns_has_one_value_per_head(model, tokens):
    clean, corrupted = tokens
    real = patching.patch_head_pattern(model, clean, corrupted, metric, progress=False)
    assert patching.attribution_patch(model, clean, corrupted, metric, "pattern").shape == real.shape


@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_path_patching_through_one_input(model, tokens, receiver_input):
    clean, corrupted = tokens
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted)
        senders = [(0, head) for head in range(4)]
        receivers = [(1, 0), (1, 2)]
        got = patching.path_patch(model, clean_cache, corrupted_cache, metric, senders, receivers, receiver_input)
        # By hand, from the tokens: layer 0's heads corrupted, read layer 1's input, put it into a clean run.
        recorded = {}
        model.run_with_hooks(clean, fwd_hooks=[
            ("blocks.0.attn.hook_z", lambda z, hook: corrupted_cache[hook.name]),
            (f"blocks.1.attn.hook_{receiver_input}", lambda a, hook: recorded.__setitem__("a", a.clone())),
        ])

        def replace(a, hook):
            a[:, :, [0, 2]] = recorded["a"][:, :, [0, 2]]
            return a

        want = metric(model.run_with_hooks(clean, fwd_hooks=[(f"blocks.1.attn.hook_{receiver_input}", replace)]))
        assert got.item() == pytest.approx(want.item(), abs=1e-5)
        assert got.item() != pytest.approx(metric(model(clean)).item(), abs=1e-4)  # the path carries an effect
        unchanged = patching.path_patch(model, clean_cache, clean_cache, metric, senders, receivers, receiver_input)
        assert unchanged.item() == pytest.approx(metric(model(clean)).item(), abs=1e-5)


def test_path_patching_rejects_bad_requests(model, tokens):
    clean, _ = tokens
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
    with pytest.raises(ValueError, match="earlier layer"):
        patching.path_patch(model, cache, cache, metric, [(1, 0)], [(1, 2)])
    with pytest.raises(ValueError, match="receiver_input must be"):
        patching.path_patch(model, cache, cache, metric, [(0, 0)], [(1, 2)], "z")
    with pytest.raises(ValueError, match="at least one sender"):
        patching.path_patch(model, cache, cache, metric, [], [(1, 2)])


def test_a_metric_on_the_final_residual_stream_gives_the_same_numbers(model, tokens):
    clean, corrupted = tokens
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted)
    patches = [(f"blocks.{layer}.attn.hook_z", (slice(None), head)) for layer in range(3) for head in range(4)]
    from_logits = patching.run_patches(model, corrupted_cache, clean_cache, metric, patches, progress=False)
    from_resid = patching.run_patches(model, corrupted_cache, clean_cache, lambda resid: metric(model.unembed(model.ln_final(resid))),
                                      patches, progress=False, metric_input="resid")
    torch.testing.assert_close(from_resid, from_logits, atol=1e-5, rtol=0)
    sweep = patching.patch_residual(model, clean, corrupted, lambda resid: metric(model.unembed(model.ln_final(resid))),
                                    progress=False, metric_input="resid")
    torch.testing.assert_close(sweep, patching.patch_residual(model, clean, corrupted, metric, progress=False), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="metric_input must be"):
        patching.run_patches(model, corrupted_cache, clean_cache, metric, patches, metric_input="probs")


def test_patches_that_copy_identical_values_are_not_run(model, tokens, monkeypatch):
    clean, corrupted = tokens  # they differ at positions 1 and 3 only
    rows = []
    forward = patching._forward

    def counting(model, resid, *args):
        rows.append(resid.shape[0])
        return forward(model, resid, *args)

    monkeypatch.setattr(patching, "_forward", counting)
    got = patching.patch_residual(model, clean, corrupted, metric, batch_size=1, progress=False)
    n_prompts, n_layers, n_pos = clean.shape[0], model.cfg.n_layers, clean.shape[1]
    # No-ops: position 0 at every layer, and at layer 0 (embeddings only) every unchanged token: 0, 2, 4, 5.
    n_run = n_layers * n_pos - (n_layers + 3)
    assert sum(rows) == n_prompts * (n_run + 1)  # plus one unpatched pass for all the no-ops
    torch.testing.assert_close(got[:, 0], metric(model(corrupted)).expand(n_layers), atol=1e-5, rtol=0)


def test_necessary_and_sufficient_reads_noising_from_one():
    denoised = torch.tensor([[0.5, 0.0], [float("nan"), -0.4]])
    noised = torch.tensor([[1.0, 0.6], [float("nan"), 1.4]])
    assert patching.necessary_and_sufficient(denoised, noised, 0.3) == {"sufficient": [(0, 0)], "necessary": [(0, 1)]}


@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_path_patching_with_nnsight_gives_the_same_numbers(receiver_input):
    gqa = tiny_model(n_key_value_heads=2)
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 50, (3, 6), generator=generator)
    corrupted = torch.randint(0, 50, (3, 6), generator=generator)
    with torch.no_grad():
        _, clean_cache = gqa.run_with_cache(clean)
        _, corrupted_cache = gqa.run_with_cache(corrupted)
    senders, receivers = [(0, 1), (1, 3)], [(2, 0), (2, 3)]
    tl = patching.path_patch(gqa, clean_cache, corrupted_cache, metric, senders, receivers, receiver_input)
    nnsight = patching.path_patch(gqa, clean_cache, corrupted_cache, metric, senders, receivers, receiver_input,
                                  backend="nnsight")
    assert nnsight.item() == pytest.approx(tl.item(), abs=1e-4)
    assert tl.item() != pytest.approx(metric(gqa(clean)).item(), abs=1e-4)
    with pytest.raises(ValueError, match="backend='nnsight'"):
        patching.path_patch(gqa, clean_cache, corrupted_cache, metric, senders, receivers, receiver_input, remote=True)
